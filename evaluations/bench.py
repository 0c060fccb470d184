"""``artmed bench``: our detectors against ART's on the same cached features, feature-extraction throughput, and
the study's wall time; prints tables and writes one JSON file.

Each ratio (ART seconds / ours) comes from one process, the same feature array and interleaved runs (ours, then
ART's, then the next repeat; the fastest repeat counts), so background load slows both sides alike; absolute
seconds still depend on that load, and the JSON records the load average next to them. On an oversubscribed
machine multi-threaded BLAS/OpenMP calls stall at random (measured 10-20x on 2 busy cores); ``--threads 1`` runs
both sides on one thread and gives stable ratios there.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artmed.evaluations.report import format_table
from artmed.evaluations.resources import measure
from artmed.evaluations.store import atomic_write, provenance, to_jsonable
from artmed.validation import check_writable

LAYER = "image_pooled"
PRESET_IMAGE_SIZE = {"tiny": 64, "resnet50": 224, "swin_tiny": 224}
LINEAR_SPREAD = 2.0
"""Cost counts as at most linear in N when no larger size's seconds-per-sample exceeds a smaller size's by more than
this factor."""
MIN_SIZE = 500
MIN_GROUP = 20
MEMORY_BUDGET_MB = 2048.0
DETECTION_COLUMNS = ["n", "comparison", "ours_s", "art_s", "ratio", "agreement", "f1_ours", "f1_art",
                     "peak_mb_ours", "peak_mb_art", "us_per_sample_ours", "us_per_sample_art"]
EXTRACTION_COLUMNS = ["preset", "image_size", "device", "batch_size", "batches", "get_activations_img_s",
                      "embed_images_img_s", "peak_mb"]
TRAINING_COLUMNS = ["preset", "image_size", "device", "batch_size", "steps", "img_s", "s_per_1000_images", "peak_mb"]
LABELER_SIZES = (10_000, 100_000, 1_000_000)
LABELER_COLUMNS = ["bytes", "seconds", "ratio", "size_ratio", "peak_mb"]
SPECTRE_COLUMNS = ["n", "spectre_s", "ss_s", "time_ratio", "f1_spectre", "f1_ss", "peak_mb_spectre"]


@dataclass
class Planted:
    """Synthetic cached features: (N, D) float32, (N, 14) label rows, the ground-truth poison mask."""

    features: np.ndarray
    labels: np.ndarray
    poison_mask: np.ndarray


def synthetic_features(n: int, dim: int = 512, n_groups: int = 4, poison_share: float = 0.01, shift: float = 15.0,
                       seed: int = 0, chunk: int = 16384) -> Planted:
    """Seeded features of `n_groups` label groups (sizes in ratio n_groups : ... : 1, each a Gaussian with rank-20
    structure plus unit noise) with `poison_share` of all samples, all in the largest group, shifted by `shift`
    along one random direction (a trigger's footprint). Built chunk by chunk into one preallocated float32 array.
    """
    rng = np.random.default_rng(seed)
    weights = np.arange(n_groups, 0, -1, dtype=np.float64)
    sizes = np.floor(n * weights / weights.sum()).astype(np.int64)
    sizes[0] += n - sizes.sum()
    features = np.empty((n, dim), dtype=np.float32)
    labels = np.zeros((n, 14), dtype=np.float32)
    rank = min(20, dim)
    start = 0
    for g, size in enumerate(sizes):
        basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].astype(np.float32)
        scale = (2.0 * np.linspace(1.0, 0.3, rank)).astype(np.float32)
        mean = rng.normal(size=dim).astype(np.float32)
        for lo in range(start, start + int(size), chunk):
            hi = min(lo + chunk, start + int(size))
            factors = rng.standard_normal((hi - lo, rank), dtype=np.float32) * scale
            features[lo:hi] = mean + factors @ basis.T + rng.standard_normal((hi - lo, dim), dtype=np.float32)
        labels[start : start + size, g % 14] = 1.0
        start += int(size)
    poison = rng.choice(int(sizes[0]), max(1, int(round(poison_share * n))), replace=False)
    direction = rng.normal(size=dim)
    features[poison] += (shift * direction / np.linalg.norm(direction)).astype(np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[poison] = True
    return Planted(features, labels, mask)


class FeatureClassifier:
    """The ART classifier surface the poison detectors touch, answering ``get_activations`` with its input: ART is
    handed the feature array itself as ``x_train`` and so analyses exactly the features ours do (no copy)."""

    def __init__(self, nb_classes: int) -> None:
        self.nb_classes = nb_classes
        self.layer_names = [LAYER]

    def get_activations(self, x: np.ndarray, layer: int | str = 0, batch_size: int = 128,
                        framework: bool = False) -> np.ndarray:
        """The features passed in."""
        return x


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the next measured
    block's resident-memory peak is not hidden by pages an earlier block freed but the allocator kept."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    _release_memory()
    with measure() as cost:
        flags = fn()
    return flags, cost.as_dict()


def _detectors(planted: Planted, device: str, eps: float, removal_share: float, seed: int
               ) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a call returning boolean flags (N,), ours from a fresh context over the cached features."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from sklearn.exceptions import ConvergenceWarning

    from artmed.defenses import ActivationClustering, EvaluationContext, SpectralSignatures, group_labels
    from artmed.defenses.spectre import SPECTRE

    feats, y = planted.features, planted.labels
    ids, names = group_labels(y)
    # ART's segment_by_class reads a one-column one-hot row with int(), which NumPy 2 refuses: one group goes as ids
    classes = np.eye(len(names), dtype=np.float32)[ids] if len(names) > 1 else ids

    def ours(defense: Any) -> Callable[[], np.ndarray]:
        return lambda: defense.run(EvaluationContext(y_train=y, feature_cache={LAYER: feats})).flags

    def art_ss() -> np.ndarray:
        defence = SpectralSignatureDefense(FeatureClassifier(len(names)), feats, classes, expected_pp_poison=eps,
                                           batch_size=128, eps_multiplier=removal_share)
        return np.asarray(defence.detect_poison()[1]) == 0

    def art_ac(reduce: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            defence = ActivationDefence(FeatureClassifier(len(names)), feats, classes)
            state = np.random.get_state()
            np.random.seed(seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    _, is_clean = defence.detect_poison(nb_clusters=2, nb_dims=10, reduce=reduce,
                                                        cluster_analysis="smaller")
            finally:
                np.random.set_state(state)
            return np.asarray(is_clean) == 0
        return run

    ss_params = {"eps": eps, "removal_share": removal_share, "device": device}
    return {
        "ss_art_mode": ours(SpectralSignatures(**ss_params, mode="art")),
        "ss_centered": ours(SpectralSignatures(**ss_params, mode="centered")),
        "spectre": ours(SPECTRE(**ss_params)),
        "art_ss": art_ss,
        "ac_art_mode": ours(ActivationClustering(mode="art", seed=seed, device=device)),
        "ac_artmed": ours(ActivationClustering(seed=seed, device=device)),
        "art_ac": art_ac("PCA"),
        "art_ac_ica": art_ac("FastICA"),
    }


COMPARISONS = (
    ("SS art-mode vs ART SS", "ss_art_mode", "art_ss", True),
    ("SS centered vs ART SS", "ss_centered", "art_ss", False),
    ("AC art-mode vs ART AC", "ac_art_mode", "art_ac", True),
    ("AC artmed vs ART AC", "ac_artmed", "art_ac", False),
    ("AC artmed vs ART AC (FastICA)", "ac_artmed", "art_ac_ica", False),
)
"""(row label, our run, ART's run, whether flags should agree: ours in ART-compatible mode). "ART AC" is ART's
ActivationDefence with PCA (its fastest setting, and what our art mode mirrors); "(FastICA)" is ART's default
reduction, the same one our artmed mode uses."""


def bench_detection(n: int, device: str, eps: float, removal_share: float, repeats: int, run_art: bool,
                    n_groups: int = 4, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One size: every detector `repeats` times, interleaved; rows per comparison and the raw runs by name.

    Seconds are the fastest repeat, peak memory the largest; flags come from the first repeat.
    """
    from artmed.evaluations.metrics import detection_metrics

    planted = synthetic_features(n, n_groups=n_groups, seed=seed)
    features_mb = planted.features.nbytes / 2**20
    runners = _detectors(planted, device, eps, removal_share, seed)
    if not run_art:
        runners = {k: v for k, v in runners.items() if not k.startswith("art_")}
    runs: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, fn in runners.items():
            flags, cost = _timed(fn)
            run = runs.setdefault(name, {"flags": flags, "costs": []})
            run["costs"].append(cost)
    for run in runs.values():
        run["seconds"] = min(c["seconds"] for c in run["costs"])
        run["seconds_median"] = float(np.median([c["seconds"] for c in run["costs"]]))
        run["peak_mb"] = max(c["peak_mb"] for c in run["costs"])
        cuda = [c["cuda_peak_mb"] for c in run["costs"] if c["cuda_peak_mb"] is not None]
        run["cuda_peak_mb"] = max(cuda) if cuda else None
        run["f1"] = detection_metrics(run["flags"], planted.poison_mask)["f1"]
        run["flagged"] = int(run["flags"].sum())
        run["us_per_sample"] = 1e6 * run["seconds"] / n
    rows = []
    for label, ours, art, comparable in COMPARISONS:
        a, b = runs[ours], runs.get(art)
        row = {"n": n, "comparison": label, "features_mb": features_mb, "ours_s": a["seconds"],
               "peak_mb_ours": a["peak_mb"], "f1_ours": a["f1"], "us_per_sample_ours": a["us_per_sample"],
               "flagged_ours": a["flagged"], "cuda_peak_mb_ours": a["cuda_peak_mb"]}
        if b is not None:
            row.update(art_s=b["seconds"], ratio=b["seconds"] / a["seconds"], peak_mb_art=b["peak_mb"],
                       f1_art=b["f1"], us_per_sample_art=b["us_per_sample"], flagged_art=b["flagged"])
            if comparable:
                row["agreement"] = float(np.mean(a["flags"] == b["flags"]))
                row["disagreements"] = int(np.sum(a["flags"] != b["flags"]))
        rows.append(row)
    for run in runs.values():
        del run["flags"]
    return rows, runs


def spectre_vs_ss(runs_by_size: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per size: SPECTRE's seconds against centred SS's from the same interleaved runs (time_ratio = SPECTRE / SS)
    and both detectors' F1 on the planted poison."""
    rows = []
    for n, runs in sorted(runs_by_size.items()):
        spectre, ss = runs["spectre"], runs["ss_centered"]
        rows.append({"n": n, "spectre_s": spectre["seconds"], "ss_s": ss["seconds"],
                     "time_ratio": spectre["seconds"] / ss["seconds"], "f1_spectre": spectre["f1"],
                     "f1_ss": ss["f1"], "peak_mb_spectre": spectre["peak_mb"],
                     "cuda_peak_mb_spectre": spectre["cuda_peak_mb"]})
    return rows


def warm_up_detection(device: str, eps: float, removal_share: float, art: bool, seed: int = 0) -> None:
    """Run every detector (ART's too when `art`) once on a small input, untimed, so one-time costs (lazy imports,
    BLAS/LAPACK start-up, first CUDA kernels) fall on neither side of the first timed size."""
    runners = _detectors(synthetic_features(MIN_SIZE, seed=seed + 1), device, eps, removal_share, seed)
    for name, run in runners.items():
        if art or not name.startswith("art_"):
            run()


def memory_check(rows: list[dict[str, Any]], budget_mb: float = MEMORY_BUDGET_MB) -> dict[str, Any]:
    """At the largest size: each of our detectors' resident peak plus the cached features it reads, against
    `budget_mb` (the issue's 2 GB for 200k x 512)."""
    n = max(row["n"] for row in rows)
    ours = {row["comparison"].split(" vs ")[0]: row["features_mb"] + row["peak_mb_ours"]
            for row in rows if row["n"] == n}
    return {"n": n, "budget_mb": budget_mb, "total_mb": ours, "ok": all(v < budget_mb for v in ours.values())}


def scaling(runs_by_size: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per detector: microseconds per sample at each size, their spread (max / min), their growth (the largest
    ratio of a bigger size's to a smaller size's) and whether cost is at most linear in N (growth within
    `LINEAR_SPREAD`; fixed costs that make small sizes dearer per sample do not count against it)."""
    out: dict[str, dict[str, Any]] = {}
    names = sorted({name for runs in runs_by_size.values() for name in runs})
    for name in names:
        per = {n: runs[name]["us_per_sample"] for n, runs in sorted(runs_by_size.items()) if name in runs}
        values = list(per.values())
        spread = max(values) / min(values) if len(values) > 1 else None
        growth = max(values[j] / values[i] for i in range(len(values)) for j in range(i + 1, len(values))) \
            if len(values) > 1 else None
        out[name] = {"us_per_sample": per, "spread": spread, "growth": growth,
                     "at_most_linear": None if growth is None else growth <= LINEAR_SPREAD}
    return out


def bench_extraction(preset: str, device: str, batches: int, warmup: int, batch_size: int = 64,
                     seed: int = 0) -> dict[str, Any]:
    """Images per second of ``get_activations(image_pooled)`` and ``embed_images`` on random images through a
    randomly initialised `preset` MedCLIP (bf16 autocast on CUDA, the estimator's ``amp``)."""
    import torch

    from artmed.estimator import MedCLIPEstimator
    from artmed.models import build_medclip, default_tokenizer

    size = PRESET_IMAGE_SIZE[preset]
    tokenizer = default_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_medclip(preset, vocab_size=len(tokenizer) if preset == "tiny" else None)
    estimator = MedCLIPEstimator(model, tokenizer, {"a": ["a"], "b": ["b"]}, input_shape=(1, size, size),
                                 device=device, batch_size=batch_size, amp=True)
    images = np.random.default_rng(seed).random((batch_size, 1, size, size), dtype=np.float32)
    calls = {
        "get_activations": lambda: estimator.get_activations(images, LAYER, batch_size=batch_size),
        "embed_images": lambda: estimator.embed_images(images, batch_size=batch_size),
    }
    record: dict[str, Any] = {"preset": preset, "image_size": size, "device": str(estimator.device),
                              "batch_size": batch_size, "batches": batches, "warmup": warmup,
                              "amp_bf16": estimator.device.type == "cuda"}
    peak = 0.0
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        _release_memory()
        with measure() as cost:
            for _ in range(batches):
                call()
        record[f"{name}_img_s"] = batches * batch_size / cost.seconds
        peak = max(peak, cost.peak_mb)
        if cost.cuda_peak_mb is not None:
            record["cuda_peak_mb"] = max(record.get("cuda_peak_mb", 0.0), cost.cuda_peak_mb)
    record["peak_mb"] = peak
    del estimator, model
    return record


def bench_training(preset: str, device: str, steps: int, warmup: int, batch_size: int = 32,
                   seed: int = 0) -> dict[str, Any]:
    """Training images per second (and seconds per 1000 images) of unpaired ``fit`` through a randomly initialised
    `preset` MedCLIP, both encoders trained, on random images and 12-token sentences (bf16 autocast on CUDA): the
    victim's and the pre-training's cost per image; ``warmup`` untimed steps first."""
    import torch

    from artmed.constants import NUM_LABELS
    from artmed.estimator import MedCLIPEstimator
    from artmed.models import build_medclip, default_tokenizer

    size = PRESET_IMAGE_SIZE[preset]
    tokenizer = default_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_medclip(preset, vocab_size=len(tokenizer) if preset == "tiny" else None)
    estimator = MedCLIPEstimator(model, tokenizer, {"a": ["a"], "b": ["b"]}, input_shape=(1, size, size),
                                 device=device, batch_size=batch_size, amp=True)
    rng = np.random.default_rng(seed)
    images = rng.random((2 * batch_size, 1, size, size), dtype=np.float32)
    labels = np.eye(NUM_LABELS, dtype=np.float32)[rng.integers(0, NUM_LABELS, len(images))]
    texts = [" ".join(["left lower lobe opacity with small pleural effusion"] * 2)] * batch_size
    fit = {"texts": texts, "text_labels": labels[:batch_size], "batch_size": batch_size, "lr": 1e-5, "verbose": False}
    if warmup:
        estimator.fit(images, labels, steps=warmup, **fit)
    _release_memory()
    with measure() as cost:
        estimator.fit(images, labels, steps=steps, **fit)
    img_s = steps * batch_size / cost.seconds
    record = {"preset": preset, "image_size": size, "device": str(estimator.device), "batch_size": batch_size,
              "steps": steps, "warmup": warmup, "amp_bf16": estimator.device.type == "cuda", "img_s": img_s,
              "s_per_1000_images": 1000.0 / img_s, "peak_mb": cost.peak_mb}
    if cost.cuda_peak_mb is not None:
        record["cuda_peak_mb"] = cost.cuda_peak_mb
    del estimator, model
    return record


def bench_study(preset: str, device: str, seed: int = 0) -> dict[str, Any]:
    """Wall time and peak memory of the built-in study end to end (in a temporary output folder)."""
    from artmed.evaluations.study import default_config, quick_config, run_study

    with tempfile.TemporaryDirectory(prefix="artmed-bench-study-") as folder:
        config = (quick_config if preset == "quick" else default_config)(folder, seed=seed)
        config.device = device
        _release_memory()
        with measure() as cost:
            result, _ = run_study(config, verbose=False)
        return {"preset": preset, "seconds": cost.seconds, "peak_mb": cost.peak_mb, "cells": {
            "models": len(result.models), "defenses": len(result.defenses)}}


def labeler_scaling(sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Seconds (and peak memory) the report labeler takes for a one-sentence report ("no effusion, effusion, ...")
    of each size in bytes, and the ratio to the first size's seconds: linear cost keeps it near ``size_ratio``,
    quadratic cost near its square."""
    from artmed.data.labeler import label_report

    label_report("No effusion.")  # compiled patterns and caches are not part of the first size's time
    rows = []
    for size in sizes:
        report = "no " + "effusion, " * max(0, (size - 3) // 10)
        with measure() as cost:
            label_report(report)
        rows.append({"bytes": len(report), "seconds": cost.seconds, "peak_mb": cost.peak_mb})
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
        row["size_ratio"] = row["bytes"] / rows[0]["bytes"]
    return rows


def machine_info(device: str) -> dict[str, Any]:
    """CPU count, torch threads, the device's name, load average, memory and package versions."""
    import torch

    from artmed.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        name = torch.cuda.get_device_name(resolved)
    else:
        name = _cpu_model() or platform.processor() or platform.machine()
    info = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(resolved),
        "device_name": name,
        "memory_gb": _memory_gb(),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    info.update(provenance())
    return info


def _cpu_model() -> str | None:
    path = Path("/proc/cpuinfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _memory_gb() -> float | None:
    path = Path("/proc/meminfo")
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return None


def _size(text: str) -> int:
    """'10000', '10k' or '2m' -> an integer number of samples."""
    value = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    try:
        n = int(float(value[:-1] if factor > 1 else value) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be a number like 10000 or 10k, got {text!r}") from None
    if n < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"size must be at least {MIN_SIZE} (the smallest label group needs room "
                                         f"for ART's 10-d PCA and at least one poison), got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The ``artmed bench`` options."""
    parser = argparse.ArgumentParser(
        prog="artmed bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=_size, default=[10_000, 50_000, 200_000],
                        help="numbers of cached 512-d feature vectors for the detection benchmark (10k, 50k ...; "
                             "none given: no detection benchmark)")
    parser.add_argument("--skip-art-above", type=_size, default=None, metavar="N",
                        help="skip ART's detectors for sizes above N (ours still run)")
    parser.add_argument("--groups", type=int, default=4,
                        help="label groups in the synthetic features (1 = the worst case for memory: one big group)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per detector and size (fastest is kept)")
    parser.add_argument("--eps", type=float, default=0.05,
                        help="expected poison share per label group (SS flags removal-share x eps of each group)")
    parser.add_argument("--removal-share", type=float, default=1.5, help="SS multiplier of eps (ART's eps_multiplier)")
    parser.add_argument("--extract", nargs="+", choices=[*PRESET_IMAGE_SIZE, "none"],
                        default=list(PRESET_IMAGE_SIZE), help="presets for the feature-extraction throughput")
    parser.add_argument("--batches", type=int, default=3, help="timed batches of 64 images per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing")
    parser.add_argument("--train", nargs="+", choices=[*PRESET_IMAGE_SIZE, "none"], default=["none"],
                        help="presets for the training throughput (unpaired fit, batch --train-batch)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps per preset")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (the released 32)")
    parser.add_argument("--study", choices=["quick", "default", "none"], default="quick",
                        help="time the built-in study end to end")
    parser.add_argument("--labeler", action="store_true",
                        help="also time the report labeler on one-sentence reports of 10 KB, 100 KB and 1 MB")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap torch and BLAS/OpenMP threads for ours and ART alike (default: untouched); "
                             "1 gives stable ratios on a busy machine")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ... (ours, extraction, study; ART is CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench.json", help="JSON file with every number and the machine info")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    from artmed.device import resolve_device

    for name in ("repeats", "batches", "groups", "threads", "train_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.train_batch < 2:
        raise ValueError(f"--train-batch must be >= 2, got {args.train_batch}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.groups > 14:
        raise ValueError(f"--groups must be at most 14 (one CheXpert label per group), got {args.groups}")
    smallest = min(args.sizes) // (args.groups * (args.groups + 1) // 2) if args.sizes else MIN_GROUP
    if smallest < MIN_GROUP:
        raise ValueError(f"with --groups {args.groups}, size {min(args.sizes)} leaves {smallest} samples in the "
                         f"smallest label group; use larger --sizes or fewer groups (ART's 10-d PCA needs {MIN_GROUP})")
    if not 0.0 < args.eps <= 1.0:
        raise ValueError(f"--eps must be in (0, 1], got {args.eps}")
    if args.removal_share <= 0:
        raise ValueError(f"--removal-share must be positive, got {args.removal_share}")
    resolve_device(args.device)
    check_writable(args.out, "--out", folder=False)  # before the benchmark, not after it


def _summary_lines(scale: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, entry in scale.items():
        per = ", ".join(f"{n}: {v:.3g}" for n, v in entry["us_per_sample"].items())
        if entry["spread"] is None:
            verdict = "one size only"
        else:
            linear = "at most linear in N" if entry["at_most_linear"] else "SUPERLINEAR in N"
            verdict = f"grows x{entry['growth']:.2f} towards larger N, {linear}"
        lines.append(f"  {name:12s} us/sample {per}  ({verdict})")
    return lines


def run_benchmarks(args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """Every benchmark `args` asks for; returns the JSON payload (config, `machine`, detection, extraction, study)."""
    import torch

    extract = [] if "none" in args.extract else list(dict.fromkeys(args.extract))
    payload: dict[str, Any] = {"config": vars(args), "machine": machine}
    started = time.perf_counter()
    payload["machine"]["torch_threads_used"] = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    runs_by_size: dict[int, dict[str, dict[str, Any]]] = {}
    if args.sizes:
        any_art = args.skip_art_above is None or min(args.sizes) <= args.skip_art_above
        warm_up_detection(args.device, args.eps, args.removal_share, any_art, args.seed)
    for n in args.sizes:
        run_art = args.skip_art_above is None or n <= args.skip_art_above
        print(f"detection: N={n} x 512 ...", flush=True)
        size_rows, runs = bench_detection(n, args.device, args.eps, args.removal_share, args.repeats, run_art,
                                          args.groups, args.seed)
        rows += size_rows
        runs_by_size[n] = runs
    payload["detection"] = rows
    payload["detection_runs"] = runs_by_size
    payload["scaling"] = scaling(runs_by_size)
    payload["spectre"] = spectre_vs_ss(runs_by_size)
    payload["memory_check"] = memory_check(rows) if rows else None
    payload["extraction"] = []
    for preset in extract:
        print(f"extraction: {preset} ...", flush=True)
        payload["extraction"].append(bench_extraction(preset, args.device, args.batches, args.warmup, seed=args.seed))
    payload["training"] = []
    for preset in [] if "none" in args.train else list(dict.fromkeys(args.train)):
        print(f"training: {preset} ...", flush=True)
        payload["training"].append(bench_training(preset, args.device, args.train_steps, args.warmup,
                                                  args.train_batch, args.seed))
    if args.study != "none":
        print(f"study: {args.study} ...", flush=True)
        payload["study"] = bench_study(args.study, args.device, args.seed)
    if args.labeler:
        print("labeler: 10 KB .. 1 MB ...", flush=True)
        payload["labeler"] = labeler_scaling(LABELER_SIZES)
    payload["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    payload["total_seconds"] = time.perf_counter() - started
    return payload


def report(payload: dict[str, Any]) -> str:
    """The terminal summary of a payload: machine line, detection table, scaling, memory, extraction, study."""
    machine = payload["machine"]
    lines = [f"Machine: {machine['device_name']} ({machine['device']}), {machine['cpus_usable']} usable CPUs, "
             f"{machine['torch_threads_used']} torch threads (thread cap: {payload['config']['threads']}); "
             f"load average {machine['load_average_start']} -> {machine['load_average_end']}"]
    rows, memory = payload["detection"], payload["memory_check"]
    if rows:
        lines += ["", "Detection on cached 512-d features (ratio = ART seconds / ours; agreement = identical flags)",
                  format_table(rows, DETECTION_COLUMNS), "Cost per sample across sizes:",
                  *_summary_lines(payload["scaling"])]
        totals = ", ".join(f"{k} {v:.0f} MB" for k, v in memory["total_mb"].items())
        lines.append(f"Memory at N={memory['n']} (features + our peak): {totals} -> "
                     f"{'under' if memory['ok'] else 'OVER'} {memory['budget_mb']:.0f} MB")
        lines += ["", "SPECTRE beside SS centered (time_ratio = SPECTRE seconds / SS seconds, same run; F1 on the "
                      "planted poison)", format_table(payload["spectre"], SPECTRE_COLUMNS)]
    if payload["extraction"]:
        lines += ["", "Feature extraction (random init, random images)",
                  format_table(payload["extraction"], EXTRACTION_COLUMNS)]
    if payload.get("training"):
        lines += ["", "Unpaired training (random init, random images; both encoders)",
                  format_table(payload["training"], TRAINING_COLUMNS)]
    if "study" in payload:
        study = payload["study"]
        lines += ["", f"Study '{study['preset']}' end to end: {study['seconds']:.1f} s, peak {study['peak_mb']:.0f} MB"]
    if "labeler" in payload:
        lines += ["", "Report labeler on one long sentence (ratio = seconds / the smallest report's; linear cost keeps "
                      "it near size_ratio)", format_table(payload["labeler"], LABELER_COLUMNS)]
    return "\n".join(lines)


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap torch's threads and every BLAS/OpenMP pool numpy and scikit-learn use (threadpoolctl) inside the block,
    so ours and ART's run on the same number of threads; None leaves all thread settings untouched."""
    if threads is None:
        yield
        return
    # threadpoolctl caps only the pools already loaded: scipy and scikit-learn bring their own OpenBLAS / OpenMP
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks chosen by `argv`, print the tables and write the JSON; returns the exit status."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    machine = machine_info(args.device)  # before any thread cap: torch_threads is the machine's default
    with thread_limit(args.threads):
        payload = run_benchmarks(args, machine)
    print("\n" + report(payload))
    out = atomic_write(args.out, json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n")
    print(f"\nWrote {out}")
    return 0
