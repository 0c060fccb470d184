"""torchrun worker for tests/test_distributed.py: the ``artmed.train_ddp`` run, then a BadDist fine-tune, on gloo.

Usage: ``torchrun --nproc_per_node=2 tests/_ddp_worker.py OUT [train_ddp arguments...]``; rank 0 writes the
trained bundle to OUT/fit and the BadDist bundle (plus its history) to OUT/bad_dist.
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
        barrier()
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
