"""A study's cells spread over processes or machines by Ray (``artmed run --workers N``, ``--ray-address``).

The unit of work is one attacked model with its defenses (``Harness.compute_attack``), after its seed's base model
(``Harness.compute_base``, a task the seed's attacked models depend on): Ray schedules them on ``workers`` local
processes, or on the cluster at ``address``, as their inputs finish. Every task writes its cells into the study's
output folder (atomic writes; no two tasks write the same cell) and the driver then reads them back as a resumed
serial run does, so the tables are those of ``--workers 1``. Each task runs with the same thread counts as the serial
run (``threads``: torch's and the BLAS libraries'), since the thread count changes floating-point results.

Ray, not a scheduler of our own: it runs the same tasks on one machine and on a cluster (``ray start`` on the
nodes, or its SLURM launch scripts), passes each task's inputs as they finish, and restarts no finished work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from artmed.device import thread_limit
from artmed.progress import tqdm

if TYPE_CHECKING:
    from artmed.evaluations.config import StudyConfig
    from artmed.evaluations.harness import Harness

DEFAULT_THREADS = 1
"""Threads per cell when not told (``artmed run --threads``): one, so that a study's numbers are the same on machines
with any number of cores (the thread count changes floating-point results); the cores go to workers instead."""
AUTO_MIN_STEPS = 1000
"""Victim training steps in all (seeds x attacked models x ``train.steps``) below which a study runs serially when not
told otherwise: Ray's start (~10 s) would outweigh the gain (the quick preset, 20 steps: 12 s serial, 26 s with two
workers on 2 cores)."""
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_WORKER_STATE: dict[str, Any] = {}
"""One worker process's harness and the data of the last seed it loaded (a worker takes many tasks)."""


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("artmed run --workers needs Ray: pip install 'artmed[ray]' (or pip install ray)") from exc
    return ray


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(config: StudyConfig, threads: int) -> int:
    """The worker processes a study gets when not told (``artmed run`` without ``--workers``): one per ``threads``
    cores this process may use, at most one per attacked model of the study, where the study runs on the CPU, outside
    ``torchrun``, with Ray installed; otherwise 1 (a serial run, with a hint where Ray would have used more cores).
    A study whose victims train fewer than ``AUTO_MIN_STEPS`` steps in all (the quick preset) runs serially: starting
    Ray's processes would cost it more than it gains. The tables are the same for any number of workers, so this
    choice only sets the wall time."""
    from artmed.device import resolve_device
    from artmed.distributed import world_size

    models = len(config.seed_list) * len(config.attacks)
    wanted = min(usable_cores() // threads, models)
    torchrun = world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if (
        wanted <= 1
        or models * config.train.steps < AUTO_MIN_STEPS
        or torchrun
        or resolve_device(config.device).type != "cpu"
    ):
        return 1
    if importlib.util.find_spec("ray") is None:
        warnings.warn(
            f"the study's cells run one after another on {threads} thread(s) of the {usable_cores()} cores here: "
            f"pip install 'artmed[ray]' to run {wanted} at once (the tables stay the same)",
            stacklevel=3,
        )
        return 1
    return wanted


def compute_cells(harness: Harness, workers: int, threads: int, address: str | None = None) -> list[str]:
    """Compute every missing cell of ``harness``'s study in Ray tasks: on ``workers`` local processes, or on the
        running Ray cluster at ``address`` (each task then asks for ``threads`` CPUs). Returns the keys of the cells it
        recomputed because other artmed code had made them (``Harness.stale``). A task's unexpected error (an output
        folder that cannot be written, a cell computed under other settings) is raised here as itself. ``workers`` and
    ``threads`` are positive integers (``Harness`` checks them)."""
    if address is None:
        _warn_oversubscribed(workers, threads)
    config = harness.config
    units = [
        (seed, i) for seed in config.seed_list for i, spec in enumerate(config.attacks) if harness.pending(seed, spec)
    ]
    # longest first, so that no long task starts last while the other workers idle: more defenses, more work
    units.sort(key=lambda unit: -sum(d.runs_on(config.attacks[unit[1]].attack) for d in config.defenses))
    if not units:
        return []
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # artmed runs offline: Ray reports nothing home
        env = {name: str(threads) for name in _THREAD_VARIABLES}
        local = {"num_cpus": workers * threads} if address is None else {}
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=harness.verbose,
            logging_level="ERROR",
            runtime_env={"env_vars": env},
            **local,
        )
    try:
        return _run_tasks(ray, harness, units, threads)
    finally:
        if started:
            ray.shutdown()


def _warn_oversubscribed(workers: int, threads: int) -> None:
    """Warn when ``workers`` processes of ``threads`` threads each ask for more cores than this process may use: the
    threads then wait on each other (the default study with 2 x 2 on 2 cores ran several times slower than serial)."""
    cores = usable_cores()
    if workers * threads > cores:
        warnings.warn(
            f"{workers} workers x {threads} threads oversubscribe the {cores} cores here: the study will run slower "
            f"than with --workers 1; pass --threads {max(1, cores // workers)} (and the same --threads to every run "
            "you compare: the thread count changes floating-point results)",
            stacklevel=3,
        )


def _run_tasks(ray: Any, harness: Harness, units: list[tuple[int, int]], threads: int) -> list[str]:
    """Submit each seed's base task and its attacked models' tasks, and wait for them (a progress bar over the
    attacked models); Ctrl-C cancels what is still running."""
    config, reuse = harness.config, harness.reuse_stale
    base_task = ray.remote(num_cpus=threads)(_base_task)
    attack_task = ray.remote(num_cpus=threads)(_attack_task)
    bases = {seed: base_task.remote(config, reuse, threads, seed) for seed in dict.fromkeys(s for s, _ in units)}
    waiting = [attack_task.remote(config, reuse, threads, seed, i, bases[seed]) for seed, i in units]
    stale: list[str] = []
    bar = tqdm(total=len(waiting), desc="attacked models (Ray)", unit="model", disable=not harness.verbose)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            stale += _result(ray, done[0])
            bar.update(1)
    except BaseException:
        for ref in [*waiting, *bases.values()]:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return stale


def _result(ray: Any, ref: Any) -> Any:
    """A finished task's value; its error raised as the exception the task raised (not Ray's wrapper)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def _worker(config: StudyConfig, reuse_stale: bool, threads: int, seed: int) -> tuple[Harness, Any]:
    """This worker's harness for ``config`` (built once) and ``seed``'s data (kept while the worker's tasks are of
    that seed)."""
    from artmed.evaluations.harness import Harness

    key = json.dumps([config.to_dict(), reuse_stale, threads], sort_keys=True, default=str)
    if _WORKER_STATE.get("key") != key:
        _WORKER_STATE.clear()
        harness = Harness(replace(config), verbose=False, reuse_stale=reuse_stale, workers=1, threads=threads)
        _WORKER_STATE.update(key=key, harness=harness)
    harness = _WORKER_STATE["harness"]
    if _WORKER_STATE.get("seed") != seed:
        _WORKER_STATE.update(seed=seed, run=harness.load_data(seed))
    return harness, _WORKER_STATE["run"]


def _base_task(config: StudyConfig, reuse_stale: bool, threads: int, seed: int) -> str | None:
    with thread_limit(threads):
        harness, run = _worker(config, reuse_stale, threads, seed)
        return harness.compute_base(run)


def _attack_task(
    config: StudyConfig, reuse_stale: bool, threads: int, seed: int, index: int, base_error: str | None
) -> list[str]:
    with thread_limit(threads):
        harness, run = _worker(config, reuse_stale, threads, seed)
        harness.stale = []
        harness.compute_attack(run, config.attacks[index], base_error)
        return list(harness.stale)
