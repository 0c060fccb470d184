"""The machine a benchmark runs on and how it is measured: machine info, thread caps, memory release, timing."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from artmed.evaluations.resources import measure
from artmed.evaluations.store import provenance


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
