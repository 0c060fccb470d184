"""Does BadDist separate? Per seed: a base MedCLIP pre-trained on the phantom data, BadDist on a shadow set, and the
backdoored encoder's mean cosine to the base encoder on held-out clean and triggered images.

``artmed separation --preset tiny --seeds 10 --triggers patch fourier`` prints one row per seed and trigger and the
count of seeds where the attack worked: cos(triggered) <= 0 while cos(clean) >= 0.95 (the bar of the built-in
study). ``resnet50`` and ``swin_tiny`` keep their vision encoder and take the tiny text tower (BadDist touches only
the vision side), at ``--image-size`` (Swin needs 224: its 7-token windows must fit the last stage). Their base
must be trained until its embeddings differ between images: a ResNet-50 pre-trained 50 steps at 64 px maps every
image to nearly one vector (student-teacher cosine 0.99996 on clean and triggered alike), which measures nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from artmed.attacks.pipeline import AttackSpec, supply_chain_attack
from artmed.data.default import make_default_dataset
from artmed.device import resolve_device
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.aggregate import format_summary, summarize
from artmed.evaluations.store import atomic_write
from artmed.models import build_medclip, default_tokenizer
from artmed.models.config import PRESETS
from artmed.progress import tqdm
from artmed.validation import check_writable

__all__ = ["SUCCESS", "base_model", "separation", "main"]

SUCCESS = {"cos_trigger_max": 0.0, "cos_clean_min": 0.95}
"""The bar: triggered embeddings at least orthogonal to the clean encoder's, clean ones within cos 0.95 of it."""


def base_model(preset: str, prompts: dict[str, list[str]], image_size: int, seed: int, device: str) -> MedCLIPEstimator:
    """A seeded, freshly initialised estimator of ``preset``; the large presets get the tiny text tower."""
    if preset == "tiny":
        return MedCLIPEstimator.tiny(prompts, image_size=image_size, seed=seed, device=device)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    tokenizer = default_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_medclip(preset, vocab_size=len(tokenizer), text=PRESETS["tiny"].text)
    return MedCLIPEstimator(model, tokenizer, prompts, input_shape=(1, image_size, image_size), device=device)


def separation(
    preset: str,
    seed: int,
    triggers: Sequence[tuple[str, dict[str, Any]]],
    baddist: dict[str, Any],
    image_size: int = 64,
    n_train: int = 2000,
    n_shadow: int = 1024,
    n_probe: int = 200,
    pretrain: dict[str, Any] | None = None,
    device: str = "auto",
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """One seed: pre-train the base (``pretrain``: fit parameters), then BadDist once per trigger; one row each."""
    data = make_default_dataset(n_train=n_train + n_shadow, n_test=n_probe, image_size=image_size, seed=seed)
    task = data.tasks["rsna_like"]
    images, labels = data.train.to_array(), data.train.labels
    base = base_model(preset, task.prompts, image_size, seed, device)
    start = time.perf_counter()
    fit = {"steps": 300, "batch_size": 64, "lr": 1e-3, **(pretrain or {})}
    base.fit(
        images[:n_train],
        labels[:n_train],
        texts=data.texts.sentences,
        text_labels=data.texts.labels,
        seed=seed,
        verbose=verbose,
        **fit,
    )
    rows = [{"preset": preset, "seed": seed, "pretrain_seconds": time.perf_counter() - start}]
    for trigger, params in triggers:
        spec = AttackSpec("baddist", trigger=trigger, trigger_params=params, seed=seed, baddist_params=baddist)
        start = time.perf_counter()
        context = spec.context(
            x_shadow=images[n_train:], y_shadow=labels[n_train:], x_probe=task.images.to_array(), verbose=verbose
        )
        _, history = supply_chain_attack(spec, base, context)
        probe, steps = history["baddist_probe"], history["baddist"]
        rows.append(
            {
                **rows[0],
                "trigger": _label(trigger, params),
                "baddist_seconds": time.perf_counter() - start,
                "cos_clean": probe["cos_clean"],
                "cos_trigger": probe["cos_trigger"],
                "train_cos_clean": steps["cos_clean"][-1],
                "train_cos_trigger": steps["cos_trigger"][-1],
                "separated": probe["cos_trigger"] <= SUCCESS["cos_trigger_max"]
                and probe["cos_clean"] >= SUCCESS["cos_clean_min"],
            }
        )
    return rows[1:]


def _label(trigger: str, params: dict[str, Any]) -> str:
    return trigger + "".join(f" {k}={v}" for k, v in sorted(params.items()))


def _trigger(text: str) -> tuple[str, dict[str, Any]]:
    """``fourier`` or ``fourier:alpha=0.3,window=0.2`` -> (name, params)."""
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: the value of {key!r} is not JSON ({exc.msg})") from exc
    return name, params


def _positive(text: str) -> int:
    """A positive integer option value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _mapping(text: str) -> dict[str, Any]:
    """A JSON object option value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object ({{...}}), got {text!r}")
    return value


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, baddist: dict[str, Any]) -> None:
    """Every trigger and the BadDist settings build, the device exists and ``--out`` can be written: refused here,
    before the first base model's minutes of training."""
    for trigger, params in args.triggers:
        try:
            AttackSpec("baddist", trigger=trigger, trigger_params=params, baddist_params=baddist)
        except ValueError as exc:
            parser.error(f"--triggers {_label(trigger, params)}: {exc}")
    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    if args.out:
        try:
            check_writable(args.out, "--out", folder=False)
        except ValueError as exc:
            parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="artmed separation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=_positive, default=10, help="seeds 0 .. N-1 (each its own data and base model)")
    parser.add_argument(
        "--triggers",
        nargs="+",
        default=[("patch", {}), ("fourier", {})],
        type=_trigger,
        help="trigger names with optional parameters, e.g. fourier:alpha=0.3",
    )
    parser.add_argument("--settings", default="tiny", help="BadDist settings name (artmed.attacks.poisoning)")
    parser.add_argument("--baddist", default="{}", type=_mapping, help="JSON BadDist parameters over --settings")
    parser.add_argument("--image-size", type=_positive, default=64)
    parser.add_argument("--n-train", type=_positive, default=2000)
    parser.add_argument("--n-shadow", type=_positive, default=1024)
    parser.add_argument("--pretrain", default="{}", type=_mapping, help="JSON fit parameters of the base model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="write every row (JSON) here")
    args = parser.parse_args(argv)
    baddist = {"settings": args.settings, **args.baddist}
    _check_options(parser, args, baddist)
    rows: list[dict[str, Any]] = []
    for seed in tqdm(range(args.seeds), desc=f"BadDist separation ({args.preset})"):
        rows += separation(
            args.preset,
            seed,
            args.triggers,
            baddist,
            image_size=args.image_size,
            n_train=args.n_train,
            n_shadow=args.n_shadow,
            pretrain=args.pretrain,
            device=args.device,
        )
        if args.out:
            atomic_write(args.out, json.dumps(rows, indent=1) + "\n")
    for row in rows:
        print(
            f"seed {row['seed']:3d}  {row['trigger']:24s} cos clean {row['cos_clean']:+.3f}  "
            f"cos triggered {row['cos_trigger']:+.3f}  {'separated' if row['separated'] else 'NOT separated'}"
        )
    metrics = ("cos_clean", "cos_trigger", "baddist_seconds")
    print(format_summary(summarize(rows, ("preset", "trigger"), metrics), ("preset", "trigger"), metrics))
    for trigger in dict.fromkeys(r["trigger"] for r in rows):
        mine = [r for r in rows if r["trigger"] == trigger]
        print(f"{args.preset} {trigger}: separated on {sum(r['separated'] for r in mine)} of {len(mine)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
