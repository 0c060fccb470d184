"""Unpaired MedCLIP training on the built-in phantom data, single-process or data-parallel under ``torchrun``.

    torchrun --nproc_per_node=2 -m artmed.train_ddp --steps 50 --out DIR

Every rank builds the same data and model from the seed, trains with DDP (``artmed.distributed``) and rank 0
alone writes the estimator bundle (``MedCLIPEstimator.save``) and ``history.json`` into ``--out``. Run with plain
``python -m artmed.train_ddp`` it trains in one process with the same global batch and gives the same result.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from torch import nn

from artmed.distributed import barrier, init_from_env, on_rank0, shutdown, world_size

HISTORY_FILE = "history.json"
PROMPT_TASK = "chexpert5"
"""The default zero-shot task whose prompts a freshly built estimator carries."""


def set_text_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability in the text encoder to ``p`` (0 makes runs independent of dropout masks)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"text dropout must be in [0, 1), got {p}")
    for module in cast(nn.Module, model.text_model).modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def fit_default(
    *,
    steps: int,
    batch_size: int = 32,
    text_batch_size: int | None = None,
    lr: float = 1e-3,
    n_train: int = 512,
    n_texts: int | None = None,
    image_size: int = 64,
    seed: int = 0,
    init: str | os.PathLike[str] | None = None,
    text_dropout: float | None = None,
    device: Any = "auto",
    verbose: bool = True,
    **fit_kwargs: Any,
) -> tuple[Any, dict[str, list[float]]]:
    """Build the phantom dataset and an estimator (fresh tiny one, or the bundle ``init``) and ``fit`` it.

    ``batch_size`` is the GLOBAL batch: under torchrun each rank encodes its share. Returns
    ``(estimator, history)``; the estimator is identical on every rank.
    """
    from artmed.data import make_default_dataset
    from artmed.estimator import MedCLIPEstimator

    data = make_default_dataset(n_train=n_train, n_test=5, image_size=image_size, seed=seed, n_texts=n_texts)
    if init is None:
        estimator = MedCLIPEstimator.tiny(
            data.tasks[PROMPT_TASK].prompts, image_size=image_size, seed=seed, device=device
        )
    else:
        estimator = MedCLIPEstimator.load(init, device=device)
        if tuple(estimator.input_shape[1:]) != (image_size, image_size):
            raise ValueError(
                f"--init {str(init)!r} expects {estimator.input_shape[1]}px images; "
                f"pass --image-size {estimator.input_shape[1]}"
            )
    if text_dropout is not None:
        set_text_dropout(estimator.model, text_dropout)
    history = estimator.fit(
        data.train,
        texts=data.texts,
        steps=steps,
        batch_size=batch_size,
        text_batch_size=text_batch_size,
        lr=lr,
        seed=seed,
        verbose=verbose,
        **fit_kwargs,
    )
    return estimator, history


@on_rank0
def save_run(estimator: Any, history: dict[str, list[float]], out: Path, config: dict[str, Any]) -> None:
    """Write the estimator bundle and ``history.json`` (loss, lr, the run's config) into ``out``; rank 0 only."""
    estimator.save(out)
    record = {"config": config, "world_size": world_size(), **history}
    (out / HISTORY_FILE).write_text(json.dumps(record, indent=2))
    print(f"saved estimator to {out} (world size {world_size()}, final loss {history['loss'][-1]:.4f})")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m artmed.train_ddp``."""
    parser = argparse.ArgumentParser(prog="python -m artmed.train_ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the estimator bundle (rank 0 writes)")
    parser.add_argument("--steps", type=int, default=50, help="optimisation steps (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="GLOBAL image batch, split over ranks (32)")
    parser.add_argument("--text-batch-size", type=int, default=None, help="GLOBAL text batch (default: batch size)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3, for a fresh tiny model)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps (0.1)")
    parser.add_argument("--n-train", type=int, default=512, help="phantom training images (512)")
    parser.add_argument("--n-texts", type=int, default=None, help="report sentences (default: all generated)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seeds data, model and sampling (same on every rank)")
    parser.add_argument("--init", type=Path, default=None, help="start from a saved estimator bundle")
    parser.add_argument(
        "--text-dropout",
        type=float,
        default=None,
        help="override BERT's dropout (0 makes a DDP run match a single-process run exactly)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="process-group backend under torchrun (auto: nccl on CUDA, else gloo)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace, device: Any = "auto") -> tuple[Any, dict[str, list[float]]]:
    """Train as ``args`` (parsed by ``build_parser``) say, save on rank 0, wait for every rank; return the result."""
    estimator, history = fit_default(
        steps=args.steps,
        batch_size=args.batch_size,
        text_batch_size=args.text_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        n_train=args.n_train,
        n_texts=args.n_texts,
        image_size=args.image_size,
        seed=args.seed,
        init=args.init,
        text_dropout=args.text_dropout,
        device=device,
        verbose=not args.quiet,
    )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save_run(estimator, history, args.out, config)
    barrier()
    return estimator, history


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, join torchrun's process group if there is one, train, save on rank 0."""
    args = build_parser().parse_args(argv)
    device = init_from_env(args.backend)
    try:
        run(args, device)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
