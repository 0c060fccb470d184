"""The study against a baseline revision: the built-in study's wall time per phase for this checkout's code and for a
git revision installed beside it, side by side, and the achieved GFLOP/s of its training and BadDist steps against
the machine's convolution throughput."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

STUDY_PHASE_COLUMNS = ["phase", "baseline_s", "this_s", "ratio"]
THROUGHPUT_COLUMNS = ["step", "batch", "gflop_per_step", "gflop_once", "steps", "seconds", "gflop_s", "share_of_conv"]
FLOP_STEPS = 10
"""Timed steps (and counted steps) of training and of BadDist for the GFLOP/s figures."""
CONV_SHAPE = (64, 64, 56, 56)
"""The convolution whose float32 forward measures the machine: batch 64, 64 -> 64 channels, 3 x 3, 56 x 56."""
RESULT_MARK = "ARTMED-BENCH-STUDY "
"""The prefix of the runner's last line (its JSON result)."""
TAIL_CHARS = 3000
"""How much of a failed step's output an error shows."""

RUNNER = """
import inspect, json, sys, time
start = time.perf_counter()
import torch
out, preset, seeds, seed, device, threads, workers = sys.argv[1:8]
if threads != "none":
    torch.set_num_threads(int(threads))
import artmed
from artmed.defenses import registry
from artmed.evaluations import harness, study
from artmed.evaluations.store import provenance
source = provenance()
attacked, base = harness.Harness._attacked_model, harness.Harness._base_model
depth, nested = [0], [False]
def timed_attacked(self, *args, **kwargs):
    depth[0] += 1
    try:
        return attacked(self, *args, **kwargs)
    finally:
        depth[0] -= 1
def timed_base(self, *args, **kwargs):
    nested[0] = nested[0] or depth[0] > 0
    return base(self, *args, **kwargs)
harness.Harness._attacked_model, harness.Harness._base_model = timed_attacked, timed_base
config = getattr(study, preset + "_config")(out, seed=int(seed), n_seeds=int(seeds))
config.device = device
ready = time.perf_counter()
accepted = inspect.signature(study.run_study).parameters  # a baseline may predate workers and threads
options = {"workers": int(workers)} if "workers" in accepted else {}  # 1: serial, every cell in this process
if "threads" in accepted and threads != "none":  # "none": the side's own default
    options["threads"] = int(threads)
result, _ = study.run_study(config, verbose=False, **options)
done = time.perf_counter()
print(MARK + json.dumps({
    "artmed_file": artmed.__file__,
    "defense": config.defenses[0].name,
    "defense_file": inspect.getfile(registry.get(config.defenses[0].name)),
    "startup_seconds": ready - start,
    "study_seconds": done - ready,
    "base_in_models": nested[0],
    "torch_threads": torch.get_num_threads(),
    "source_hash": source["source_hash"],
    "git": source["git"],
    "failed": [f"{r['cell']}: {r.get('status')}: {r.get('error')}" for r in result.failed],
}))
"""
"""The study in a fresh interpreter (argv: output folder, preset, seeds, first seed, device, threads or "none",
workers); its
last line is ``RESULT_MARK`` + JSON. It also notes whether a seed's base model was built inside an attacked model's
timed block (then that model's ``train_seconds`` includes it: ``_LazyBase``), where artmed and the first defense
were imported from and the imported source's hash and git state (the evidence of which code ran)."""


class StudyRunError(RuntimeError):
    """A step of the baseline comparison (checkout, install, a side's study) failed; the message names it."""


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:].strip() or "(no output)"


def _run(command: list[str], step: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `command`; a non-zero exit raises ``StudyRunError`` naming `step` with the tail of its output."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise StudyRunError(f"{step} failed (exit status {done.returncode}):\n{_tail(done.stdout + done.stderr)}")
    return done


def repository() -> Path:
    """The git checkout the running artmed is imported from (the "this" side of the comparison)."""
    import artmed

    package = Path(artmed.__file__).resolve().parent
    done = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"--baseline needs artmed run from a git checkout; {package} is not in one")
    return Path(done.stdout.strip())


def resolve_revision(repo: Path, rev: str) -> str:
    """The commit `rev` (a hash, tag or branch) names in `repo`; ValueError with git's message when none."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ValueError(f"--baseline {rev!r} is not a commit of {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def install_revision(repo: Path, commit: str, folder: Path) -> Path:
    """`commit`'s files exported to ``folder/src`` (``git archive``: the repository is not touched) and installed
    into ``folder/site`` with this interpreter's pip (no dependencies: this environment's are used); returns the
    site folder, to go first on ``PYTHONPATH``."""
    src, site = folder / "src", folder / "site"
    src.mkdir(parents=True)
    archive = folder / "src.tar"
    _run(["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive), commit], "exporting the baseline")
    _run(["tar", "-xf", str(archive), "-C", str(src)], "unpacking the baseline")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--target", str(site)]
    _run([*pip, str(src)], "installing the baseline")
    return site


def run_side(
    name: str,
    out: Path,
    preset: str,
    seeds: int,
    seed: int,
    device: str,
    threads: int | None,
    site: Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """One side's study in a fresh interpreter (``RUNNER``) writing to `out`, with `site` first on ``PYTHONPATH``
    (None: the environment's artmed); `threads` caps torch and BLAS/OpenMP there; `workers` Ray processes where the
    side's artmed has them (1: serial). Returns the runner's JSON with the
    process's wall time (``process_seconds``); a failed run or failed cells raise ``StudyRunError``."""
    env = dict(os.environ)
    if threads is not None:
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    script = f"MARK = {RESULT_MARK!r}\n{RUNNER}"
    argv = [str(out), preset, str(seeds), str(seed), device, "none" if threads is None else str(threads), str(workers)]
    started = time.perf_counter()
    # cwd outside the checkout: `python -c` puts the working folder first on sys.path
    done = _run([sys.executable, "-c", script, *argv], f"the {name} study", env=env, cwd=out.parent)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise StudyRunError(f"the {name} study printed no result:\n{_tail(done.stdout + done.stderr)}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    if result["failed"]:
        raise StudyRunError(
            f"the {name} study has {len(result['failed'])} failed cell(s): " + "; ".join(result["failed"])
        )
    return {**result, "process_seconds": seconds}


def _check_origin(name: str, result: Mapping[str, Any], artmed: Path, defenses: Path) -> None:
    """``StudyRunError`` unless the side imported artmed from the folder `artmed` and its first defense's class from
    `defenses` (the entry points of both installs are visible to the baseline side: its own must win)."""
    for key, folder in (("artmed_file", artmed), ("defense_file", defenses)):
        if not Path(result[key]).resolve().is_relative_to(folder.resolve()):
            raise StudyRunError(f"the {name} study imported {result[key]}, which is not in {folder}")


def _cells(out: Path, kind: str) -> list[tuple[dict[str, Any], float]]:
    """Every cell record of `kind` under ``out/cells`` with its file's modification time (when it was saved)."""
    folder = out / "cells" / kind
    return [(json.loads(path.read_text())["record"], path.stat().st_mtime) for path in sorted(folder.glob("*.json"))]


def phase_seconds(
    out: Path, process_seconds: float, study_seconds: float, base_in_models: bool, parallel: bool = False
) -> dict[str, float | None]:
    """A finished study folder's wall time by phase, from its cell records: interpreter startup and imports, the base
    models' pretraining, each attack's model cells (victim training with the attack's steps, ``train_seconds``),
    each defense, and the rest (data, zero-shot scoring, tables and figures) up to `process_seconds`.
    `base_in_models`: each seed's first saved model cell timed its seed's base model too, which is taken out.
    `parallel`: the cells ran in several processes at once, so their seconds overlap and add up to more than the
    wall: the phases are the cells' own seconds and "rest" is None."""
    cells = _cells(out, "model")
    base = {r["seed"]: r["seconds"] for r, _ in cells if "train_seconds" not in r and "seconds" in r}
    models = sorted(((r, t) for r, t in cells if "train_seconds" in r), key=lambda cell: cell[1])
    phases: dict[str, float | None] = {
        "startup + imports": process_seconds - study_seconds,
        "base model": sum(base.values()),
    }
    first: set[int] = set()
    for record, _ in models:
        seconds = record["train_seconds"]
        if base_in_models and record["seed"] not in first:
            first.add(record["seed"])
            seconds -= base.get(record["seed"], 0.0)
        label = f"model: {record['attack']}"
        phases[label] = (phases.get(label) or 0.0) + seconds
    for record, _ in _cells(out, "defense"):
        if "seconds" in record:
            label = f"defense: {record['defense']}"
            phases[label] = (phases.get(label) or 0.0) + record["seconds"]
    phases["rest"] = None if parallel else process_seconds - sum(v or 0.0 for v in phases.values())
    phases["total"] = process_seconds
    return phases


def phase_rows(baseline: Mapping[str, float | None], this: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """The two sides' phases side by side (a phase only one side has gets None on the other) with the ratio baseline
    seconds / this side's; "rest" and "total" last."""
    names = list(dict.fromkeys([*baseline, *this]))
    names = [n for n in names if n not in ("rest", "total")] + ["rest", "total"]
    rows = []
    for name in names:
        old, new = baseline.get(name), this.get(name)
        ratio = old / new if old is not None and new is not None and new > 0 else None
        rows.append({"phase": name, "baseline_s": old, "this_s": new, "ratio": ratio})
    return rows


def _synchronized(device: Any) -> Callable[[], None]:
    """A call that waits for `device`'s queued work (CUDA), so a timer stops after it; nothing on the CPU."""
    import torch

    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def count_flops(call: Callable[[], object]) -> int:
    """Floating-point operations of `call` (torch's ``FlopCounterMode``: matrix products, convolutions, attention;
    a multiply-add counts 2; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def _best_seconds(call: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        call()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def conv_throughput(device: str, repeats: int = 3) -> dict[str, Any]:
    """The machine's float32 convolution throughput: GFLOP/s of ``conv2d`` forward on ``CONV_SHAPE`` (3 x 3,
    padding 1; one untimed run first, the fastest of `repeats` counts)."""
    import torch
    import torch.nn.functional as F

    from artmed.device import resolve_device

    resolved = resolve_device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(CONV_SHAPE, generator=generator).to(resolved)
    weight = torch.randn((CONV_SHAPE[1], CONV_SHAPE[1], 3, 3), generator=generator).to(resolved)
    with torch.no_grad():
        flops = count_flops(lambda: F.conv2d(x, weight, padding=1))
        F.conv2d(x, weight, padding=1)
        seconds = _best_seconds(lambda: F.conv2d(x, weight, padding=1), _synchronized(resolved), repeats)
    return {
        "shape": list(CONV_SHAPE),
        "kernel": 3,
        "gflop": flops / 1e9,
        "seconds": seconds,
        "gflop_s": flops / 1e9 / seconds,
    }


def step_throughput(name: str, run: Callable[[int], object], batch: int, steps: int, device: Any) -> dict[str, Any]:
    """GFLOP per step and achieved GFLOP/s of `run(k)`, k steps from the same start (the same batches): 1 step and
    `steps` steps counted (the first also warms up), then `steps` steps timed. The per-step GFLOP is the difference
    of the two counts over `steps` - 1 steps, ``gflop_once`` what a call does once besides its steps (BadDist's
    teacher embeddings of the shadow set, if computed up front); GFLOP/s is the timed call's whole count over its
    seconds."""
    if steps < 2:
        raise ValueError(f"step_throughput needs at least 2 steps, got {steps}")
    one = count_flops(lambda: run(1))
    flops = count_flops(lambda: run(steps))
    seconds = _best_seconds(lambda: run(steps), _synchronized(device), 1)
    per_step = (flops - one) / (steps - 1)
    return {
        "step": name,
        "batch": batch,
        "gflop_per_step": per_step / 1e9,
        "gflop_once": (one - per_step) / 1e9,
        "steps": steps,
        "seconds": seconds,
        "gflop_s": flops / 1e9 / seconds,
    }


def study_throughput(preset: str, device: str, seed: int = 0, steps: int = FLOP_STEPS) -> list[dict[str, Any]]:
    """Achieved GFLOP/s of the `preset` study's unpaired training step (its base model, data, batch size and image
    size; both encoders) and of its BadDist step (the student's forward + backward on the clean and triggered shadow
    batch, with the frozen teacher's forward where it runs per step), on this checkout's code."""
    from artmed.attacks.poisoning.bad_dist import BadDist, resolve_baddist_params
    from artmed.evaluations.sources import build_base_estimator, load_study_data
    from artmed.evaluations.study import default_config, quick_config

    config = (quick_config if preset == "quick" else default_config)("unused", seed=seed, n_seeds=1)
    config.device = device
    data = load_study_data(config, seed)
    assert config.task is not None  # StudyConfig resolves the headline task
    estimator = build_base_estimator(config, data.tasks[config.task].prompts, seed)
    train = config.train

    def fit(k: int) -> object:
        return estimator.fit(
            data.x_train,
            data.y_train,
            texts=data.texts.sentences,
            text_labels=data.texts.labels,
            batch_size=train.batch_size,
            lr=train.lr,
            steps=k,
            seed=seed,
            verbose=False,
        )

    spec = next(s for s in config.attacks if "baddist" in (s.attack or ""))
    params = {**resolve_baddist_params(spec.baddist_params), "seed": seed, "verbose": False}
    trigger = spec.build_trigger()

    def distil(k: int) -> object:
        return BadDist(estimator, trigger, **{**params, "steps": k}).poison_estimator(data.x_shadow)

    return [
        step_throughput("unpaired training", fit, train.batch_size, steps, estimator.device),
        step_throughput("BadDist", distil, 2 * params.get("batch_size", 32), steps, estimator.device),
    ]


def achieved_throughput(preset: str, device: str, seed: int = 0, steps: int = FLOP_STEPS) -> dict[str, Any]:
    """The machine's convolution throughput and the `preset` study's training and BadDist steps' achieved GFLOP/s,
    each also as a share of the convolution's (``share_of_conv``)."""
    conv = conv_throughput(device)
    rows = study_throughput(preset, device, seed, steps)
    for row in rows:
        row["share_of_conv"] = row["gflop_s"] / conv["gflop_s"]
    return {"conv2d": conv, "steps": rows}


def compare_study(
    rev: str, preset: str, seeds: int, seed: int, device: str, threads: int | None, workers: int = 1
) -> dict[str, Any]:
    """The `preset` study over `seeds` seeds for revision `rev` (installed in a temporary folder, serial) and then for
    this checkout (in `workers` Ray processes; 1: serial), each in a fresh interpreter and output folder: both sides'
    phases, the table rows, and where each side imported artmed from."""
    repo = repository()
    commit = resolve_revision(repo, rev)
    with tempfile.TemporaryDirectory(prefix="artmed-bench-baseline-") as tmp:
        folder = Path(tmp)
        print(f"study baseline: installing {rev} ({commit[:12]}) ...", flush=True)
        site = install_revision(repo, commit, folder)
        sides: dict[str, dict[str, Any]] = {}
        origins = {"baseline": (site / "artmed", site / "artmed"), "this": (repo / "artmed", repo / "defenses")}
        for name, side_site in (("baseline", site), ("this", None)):
            print(f"study baseline: the {name} side's {preset} study, {seeds} seed(s) ...", flush=True)
            out = folder / f"out-{name}"
            out.mkdir()
            load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
            side_workers = workers if name == "this" else 1
            result = run_side(name, out, preset, seeds, seed, device, threads, side_site, side_workers)
            _check_origin(name, result, *origins[name])
            phases = phase_seconds(
                out, result["process_seconds"], result["study_seconds"], result["base_in_models"], side_workers > 1
            )
            sides[name] = {**result, "phases": phases, "load_average_start": load}
            print(f"  {result['process_seconds']:.1f} s", flush=True)
    return {
        "preset": preset,
        "seeds": seeds,
        "workers": workers,
        "baseline": rev,
        "baseline_commit": commit,
        "repository": str(repo),
        "sides": sides,
        "rows": phase_rows(sides["baseline"]["phases"], sides["this"]["phases"]),
    }
