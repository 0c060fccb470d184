"""The ``artmed bench`` command line: options, running the chosen benchmarks, the terminal report and the JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from artmed.device import thread_limit
from artmed.evaluations.bench.detection import (
    MIN_GROUP,
    MIN_SIZE,
    bench_detection,
    memory_check,
    scaling,
    spectre_vs_ss,
    warm_up_detection,
)
from artmed.evaluations.bench.machine import machine_info
from artmed.evaluations.bench.study import (
    STUDY_PHASE_COLUMNS,
    THROUGHPUT_COLUMNS,
    StudyRunError,
    achieved_throughput,
    compare_study,
    repository,
    resolve_revision,
)
from artmed.evaluations.bench.throughput import (
    LABELER_SIZES,
    PRESET_IMAGE_SIZE,
    bench_extraction,
    bench_study,
    bench_training,
    labeler_scaling,
)
from artmed.evaluations.report import format_table
from artmed.evaluations.store import atomic_write, to_jsonable
from artmed.validation import check_writable

DESCRIPTION = """\
``artmed bench``: our detectors against ART's on the same cached features, feature-extraction throughput, and
the study's wall time; prints tables and writes one JSON file.

Each ratio (ART seconds / ours) comes from one process, the same feature array and interleaved runs (ours, then
ART's, then the next repeat; the fastest repeat counts), so background load slows both sides alike; absolute
seconds still depend on that load, and the JSON records the load average next to them. On an oversubscribed
machine multi-threaded BLAS/OpenMP calls stall at random (measured 10-20x on 2 busy cores); ``--threads 1`` runs
both sides on one thread and gives stable ratios there.

``--baseline REV`` runs the --study for git revision REV (installed in a temporary folder) and then for this
checkout, one after the other, each in a fresh process, and prints their wall time per phase side by side (ratio =
REV's seconds / this checkout's), then the achieved GFLOP/s of the study's training and BadDist steps against the
machine's float32 conv2d.
"""
"""The ``artmed bench --help`` description."""

DETECTION_COLUMNS = [
    "n",
    "comparison",
    "ours_s",
    "art_s",
    "ratio",
    "agreement",
    "f1_ours",
    "f1_art",
    "peak_mb_ours",
    "peak_mb_art",
    "us_per_sample_ours",
    "us_per_sample_art",
]
EXTRACTION_COLUMNS = [
    "preset",
    "image_size",
    "device",
    "batch_size",
    "batches",
    "get_activations_img_s",
    "embed_images_img_s",
    "peak_mb",
]
TRAINING_COLUMNS = ["preset", "image_size", "device", "batch_size", "steps", "img_s", "s_per_1000_images", "peak_mb"]
LABELER_COLUMNS = ["bytes", "seconds", "ratio", "size_ratio", "peak_mb"]
SPECTRE_COLUMNS = [
    "n",
    "spectre_s",
    "ss_s",
    "time_ratio",
    "f1_spectre",
    "f1_ss",
    "tpr_spectre",
    "tpr_ss",
    "peak_mb_spectre",
]


def _size(text: str) -> int:
    """'10000', '10k' or '2m' -> an integer number of samples."""
    value = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(value[-1:], 1)
    try:
        n = int(float(value[:-1] if factor > 1 else value) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be a number like 10000 or 10k, got {text!r}") from None
    if n < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"size must be at least {MIN_SIZE} (the smallest label group needs room "
            f"for ART's 10-d PCA and at least one poison), got {n}"
        )
    return n


def build_parser() -> argparse.ArgumentParser:
    """The ``artmed bench`` options."""
    parser = argparse.ArgumentParser(
        prog="artmed bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        nargs="*",
        type=_size,
        default=[10_000, 50_000, 200_000],
        help="numbers of cached 512-d feature vectors for the detection benchmark (10k, 50k ...; "
        "none given: no detection benchmark)",
    )
    parser.add_argument(
        "--skip-art-above",
        type=_size,
        default=None,
        metavar="N",
        help="skip ART's detectors for sizes above N (ours still run)",
    )
    parser.add_argument(
        "--groups",
        type=int,
        default=4,
        help="label groups in the synthetic features (1 = the worst case for memory: one big group)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per detector and size (fastest is kept)")
    parser.add_argument(
        "--eps",
        type=float,
        default=0.05,
        help="expected poison share per label group (SS flags removal-share x eps of each group)",
    )
    parser.add_argument("--removal-share", type=float, default=1.5, help="SS multiplier of eps (ART's eps_multiplier)")
    parser.add_argument(
        "--extract",
        nargs="+",
        choices=[*PRESET_IMAGE_SIZE, "none"],
        default=list(PRESET_IMAGE_SIZE),
        help="presets for the feature-extraction throughput",
    )
    parser.add_argument("--batches", type=int, default=3, help="timed batches of 64 images per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing")
    parser.add_argument(
        "--train",
        nargs="+",
        choices=[*PRESET_IMAGE_SIZE, "none"],
        default=["none"],
        help="presets for the training throughput (unpaired fit, batch --train-batch)",
    )
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps per preset")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch size (the released 32)")
    parser.add_argument(
        "--study", choices=["quick", "default", "none"], default="quick", help="time the built-in study end to end"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the --study for git commit or tag REV (installed in a temporary folder), each side in a fresh "
        "process, and print the wall time per phase side by side (ratio = REV's seconds / this checkout's), with the "
        "achieved GFLOP/s of its training and BadDist steps against the machine's conv2d",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds of the study compared with --baseline (default 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray worker processes for this checkout's side of --baseline (default 1: serial, so the phases add up "
        "to the wall time; more: the wall time artmed run gets from them, the phases then the cells' own seconds)",
    )
    parser.add_argument(
        "--labeler",
        action="store_true",
        help="also time the report labeler on one-sentence reports of 10 KB, 100 KB and 1 MB",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap torch and BLAS/OpenMP threads for ours and ART alike (default: untouched; each side of "
        "--baseline at its own default); 1 gives stable ratios on a busy machine",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ... (ours, extraction, study; ART is CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench.json", help="JSON file with every number and the machine info")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    from artmed.device import resolve_device

    for name in ("repeats", "batches", "groups", "threads", "train_steps", "seeds"):
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
        raise ValueError(
            f"with --groups {args.groups}, size {min(args.sizes)} leaves {smallest} samples in the "
            f"smallest label group; use larger --sizes or fewer groups (ART's 10-d PCA needs {MIN_GROUP})"
        )
    if not 0.0 < args.eps <= 1.0:
        raise ValueError(f"--eps must be in (0, 1], got {args.eps}")
    if args.removal_share <= 0:
        raise ValueError(f"--removal-share must be positive, got {args.removal_share}")
    if args.baseline is not None:
        if args.study == "none":
            raise ValueError("--baseline compares the study: give --study quick or --study default")
        resolve_revision(repository(), args.baseline)
    elif args.seeds is not None or args.workers != 1:
        raise ValueError("--seeds and --workers set the study compared with --baseline; give --baseline REV too")
    if args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers}")
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
        size_rows, runs = bench_detection(
            n, args.device, args.eps, args.removal_share, args.repeats, run_art, args.groups, args.seed
        )
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
        payload["training"].append(
            bench_training(preset, args.device, args.train_steps, args.warmup, args.train_batch, args.seed)
        )
    if args.baseline is not None:
        seeds = 1 if args.seeds is None else args.seeds
        payload["study_baseline"] = compare_study(
            args.baseline, args.study, seeds, args.seed, args.device, args.threads, args.workers
        )
        print(f"throughput: {args.study} study's training and BadDist steps, conv2d ...", flush=True)
        payload["study_throughput"] = achieved_throughput(args.study, args.device, args.seed)
    elif args.study != "none":
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
    lines = [
        f"Machine: {machine['device_name']} ({machine['device']}), {machine['cpus_usable']} usable CPUs, "
        f"{machine['torch_threads_used']} torch threads (thread cap: {payload['config']['threads']}); "
        f"load average {machine['load_average_start']} -> {machine['load_average_end']}"
    ]
    rows, memory = payload["detection"], payload["memory_check"]
    if rows:
        lines += [
            "",
            "Detection on cached 512-d features (ratio = ART seconds / ours; agreement = identical flags)",
            format_table(rows, DETECTION_COLUMNS),
            "Cost per sample across sizes:",
            *_summary_lines(payload["scaling"]),
        ]
        totals = ", ".join(f"{k} {v:.0f} MB" for k, v in memory["total_mb"].items())
        lines.append(
            f"Memory at N={memory['n']} (features + our peak): {totals} -> "
            f"{'under' if memory['ok'] else 'OVER'} {memory['budget_mb']:.0f} MB"
        )
        lines += [
            "",
            "SPECTRE beside SS centered (time_ratio = SPECTRE seconds / SS seconds, same run; F1 on the "
            "planted poison)",
            format_table(payload["spectre"], SPECTRE_COLUMNS),
        ]
    if payload["extraction"]:
        lines += [
            "",
            "Feature extraction (random init, random images)",
            format_table(payload["extraction"], EXTRACTION_COLUMNS),
        ]
    if payload.get("training"):
        lines += [
            "",
            "Unpaired training (random init, random images; both encoders)",
            format_table(payload["training"], TRAINING_COLUMNS),
        ]
    if "study" in payload:
        study = payload["study"]
        lines += ["", f"Study '{study['preset']}' end to end: {study['seconds']:.1f} s, peak {study['peak_mb']:.0f} MB"]
    if "study_baseline" in payload:
        lines += ["", *_baseline_lines(payload["study_baseline"], payload["study_throughput"])]
    if "labeler" in payload:
        lines += [
            "",
            "Report labeler on one long sentence (ratio = seconds / the smallest report's; linear cost keeps "
            "it near size_ratio)",
            format_table(payload["labeler"], LABELER_COLUMNS),
        ]
    return "\n".join(lines)


def _baseline_lines(study: dict[str, Any], throughput: dict[str, Any]) -> list[str]:
    """The report of ``--baseline``: the phase table, where each side imported artmed from, the GFLOP/s table."""
    sides = study["sides"]
    conv = throughput["conv2d"]
    return [
        f"Study '{study['preset']}' ({study['seeds']} seed(s)) per phase: baseline {study['baseline']} "
        f"({study['baseline_commit'][:12]}) vs this checkout, each in a fresh process (ratio = baseline / this)",
        format_table(study["rows"], STUDY_PHASE_COLUMNS),
        "  model: ATTACK = its models' train_seconds (victim training with the attack's steps; the base model's "
        "pretraining is its own row); rest = data, zero-shot scoring, tables and figures"
        + (
            f"; this side ran in {study['workers']} Ray workers: its phases are the cells' own seconds, which "
            "overlap (no rest), its total the wall time"
            if study.get("workers", 1) > 1
            else ""
        ),
        *(
            f"  {name}: artmed from {side['artmed_file']} (source hash {side['source_hash'][:12]}), "
            f"{side['defense']} from {side['defense_file']}"
            for name, side in sides.items()
        ),
        "",
        f"Achieved GFLOP/s on this checkout (share_of_conv: of float32 conv2d {conv['shape']} 3x3, "
        f"{conv['gflop_s']:.1f} GFLOP/s)",
        format_table(throughput["steps"], THROUGHPUT_COLUMNS),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks chosen by `argv`, print the tables and write the JSON; returns the exit status (1 when a
    step of ``--baseline`` failed: its message names the step)."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    machine = machine_info(args.device)  # before any thread cap: torch_threads is the machine's default
    try:
        with thread_limit(args.threads):
            payload = run_benchmarks(args, machine)
    except StudyRunError as exc:
        print(f"artmed bench: error: {exc}", file=sys.stderr)
        return 1
    print("\n" + report(payload))
    out = atomic_write(args.out, json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n")
    print(f"\nWrote {out}")
    return 0
