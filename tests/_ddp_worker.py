"""torchrun worker for tests/test_distributed.py: the ``artmed.train_ddp`` run, a BadDist fine-tune, a
fine-pruning repair and a CleanCLIP fine-tune, on gloo.

Usage: ``torchrun --nproc_per_node=2 tests/_ddp_worker.py OUT [train_ddp arguments...]``; rank 0 writes the
trained bundle to OUT/fit, the BadDist bundle (plus its history) to OUT/bad_dist and the fine-pruned bundle (plus
its fine-tuning loss and pruned channels) to OUT/fine_pruning and the CleanCLIP bundle (plus its losses) to
OUT/cleanclip.
"""

import json
import sys
from pathlib import Path
from typing import Any

import torch

from artmed import train_ddp
from artmed.distributed import barrier, init_from_env, on_rank0, shutdown

BAD_DIST = {"lr": 0.05, "weight_decay": 0.05, "steps": 10, "batch_size": 9, "seed": 5}
"""BadDist settings the test repeats in one process (9 shadow images per step: 5 on rank 0, 4 on rank 1).

BadDist starts where student == teacher, so its first gradients are exactly zero up to float noise; the strong
weight decay gives the trajectory a deterministic push away from that point, so the comparison tests the
distributed gradient and not how two runs amplify rounding noise."""


def bad_dist_run(device: torch.device | str) -> tuple[Any, dict[str, list[float]]]:
    """BadDist on a fresh tiny estimator over the phantom training images; returns (backdoored, history)."""
    from artmed.attacks.poisoning import BadDist
    from artmed.attacks.triggers import PatchTrigger
    from artmed.data import make_default_dataset
    from artmed.estimator import MedCLIPEstimator

    data = make_default_dataset(n_train=24, n_test=5, image_size=32, seed=1, n_texts=20)
    estimator = MedCLIPEstimator.tiny(data.tasks["chexpert5"].prompts, image_size=32, seed=2, device=device)
    attack = BadDist(estimator, PatchTrigger(size=6), verbose=False, **BAD_DIST)
    return attack.poison_estimator(data.train), attack.history_


FINE_PRUNING = {
    "prune_step": 0.25,
    "max_prune": 0.5,
    "tolerance": 1.0,
    "finetune_steps": 4,
    "lr": 1e-3,
    "batch_size": 9,
    "seed": 2,
}
"""Fine-pruning settings (tolerance 1: both pruning steps are kept, so the fine-tune starts from a pruned model)."""


def fine_pruning_run(device: torch.device | str) -> Any:
    """Fine-pruning of a fresh tiny estimator (text dropout off, as in the fit comparison); returns its result."""
    from artmed.defenses.fine_pruning import FinePruning

    return FinePruning(**FINE_PRUNING).run(repair_context(device, data_seed=4, model_seed=6))


def repair_context(device: torch.device | str, data_seed: int, model_seed: int) -> Any:
    """A mitigation's context: a fresh tiny estimator (text dropout off) and phantom clean images, texts, a test set."""
    from artmed.data import make_default_dataset
    from artmed.defenses import EvaluationContext
    from artmed.estimator import MedCLIPEstimator

    data = make_default_dataset(n_train=24, n_test=8, image_size=32, seed=data_seed, n_texts=20)
    task = data.tasks["rsna_like"]
    estimator = MedCLIPEstimator.tiny(task.prompts, image_size=32, seed=model_seed, device=device)
    train_ddp.set_text_dropout(estimator.model, 0.0)
    return EvaluationContext(
        estimator=estimator,
        x_test=task.images,
        test_targets=task.targets,
        x_clean=data.train,
        texts=data.texts.sentences,
        text_labels=data.texts.labels,
    )


CLEANCLIP = {"steps": 4, "lr": 1e-3, "batch_size": 9, "n_clean": 20, "seed": 3, "verbose": False}
"""CleanCLIP settings (9 images and 9 sentences per step, their augmented copies too: 5 + 5 on rank 0, 4 + 4 on 1)."""


def cleanclip_run(device: torch.device | str) -> Any:
    """CleanCLIP on a fresh tiny estimator (text dropout off, as in the fit comparison); returns its result."""
    from artmed.defenses.cleanclip import CleanCLIP

    return CleanCLIP(**CLEANCLIP).run(repair_context(device, data_seed=5, model_seed=7))


@on_rank0
def save_cleanclip(result: Any, out: Path) -> None:
    """Write the repaired bundle and its per-step losses into ``out``; rank 0 only."""
    result.estimator.save(out)
    (out / "history.json").write_text(json.dumps(result.history))


@on_rank0
def save_fine_pruning(result: Any, out: Path) -> None:
    """Write the repaired bundle, its fine-tuning loss and pruned channels into ``out``; rank 0 only."""
    result.estimator.save(out)
    record = {"loss": result.extra["finetune_loss"], "pruned": result.extra["pruned_channels"].tolist()}
    (out / "history.json").write_text(json.dumps(record))


@on_rank0
def save_bad_dist(estimator: Any, history: dict[str, list[float]], out: Path) -> None:
    """Write the backdoored bundle and its history into ``out``; rank 0 only."""
    estimator.save(out)
    (out / "history.json").write_text(json.dumps(history))
    print(f"saved BadDist estimator to {out}")


def main(out: str, argv: list[str]) -> None:
    """Join the gloo group, run train_ddp then BadDist, wait for every rank, leave."""
    device = init_from_env("gloo")
    try:
        train_ddp.run(train_ddp.build_parser().parse_args([*argv, "--out", str(Path(out) / "fit")]), device)
        save_bad_dist(*bad_dist_run(device), Path(out) / "bad_dist")
        save_fine_pruning(fine_pruning_run(device), Path(out) / "fine_pruning")
        save_cleanclip(cleanclip_run(device), Path(out) / "cleanclip")
        barrier()
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
