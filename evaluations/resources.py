"""Cost of a block of code: wall and CPU time, peak resident memory above the start, and peak CUDA memory.

Peak memory counts every allocation of the process (numpy, torch CPU tensors, C libraries), not only Python's, so
tracemalloc is not used. On Linux the kernel's exact high-water mark is used: ``VmHWM`` in ``/proc/self/status``,
reset at the start of the block through ``/proc/self/clear_refs`` (this also resets what ``getrusage`` reports as
``ru_maxrss`` for the process). Elsewhere RSS is sampled in a background thread (psutil when installed, else
``/proc/self/statm``), which can miss spikes shorter than the sampling interval. Nested and concurrent blocks each
get their own correct peak. CUDA peak comes from torch's allocator statistics when torch is in use on a GPU.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

__all__ = ["Measurement", "measure"]

MIB = 2**20
_METHODS = ("auto", "hwm", "sampled")


@dataclass
class Measurement:
    """What ``measure()`` recorded; the fields are NaN (``cuda_peak_mb`` None) until the block has finished.

    ``peak_mb``: the highest resident memory during the block minus the resident memory at its start, in MiB.
    ``cuda_peak_mb``: the peak of torch's allocated CUDA memory above the start, in MiB; None when CUDA was not used.
    ``method``: how ``peak_mb`` was measured ("hwm", "sampled", or "unavailable" with ``peak_mb`` NaN).
    """

    seconds: float = math.nan
    cpu_seconds: float = math.nan
    peak_mb: float = math.nan
    cuda_peak_mb: float | None = None
    method: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for result records)."""
        return asdict(self)


@contextmanager
def measure(method: str = "auto", interval: float = 0.005) -> Iterator[Measurement]:
    """Measure the ``with`` block: ``with measure() as cost: ...`` then read ``cost.seconds``, ``cost.peak_mb``.

    ``method``: "hwm" (Linux kernel high-water mark, exact), "sampled" (RSS polled every ``interval`` seconds) or
    "auto" (hwm where available, else sampled).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 < interval <= 1:
        raise ValueError(f"interval must be a number of seconds in (0, 1], got {interval!r}")
    hwm = _rss_watermark()
    if method == "hwm" and hwm is None:
        raise ValueError("method='hwm' needs Linux with a writable /proc/self/clear_refs; use 'sampled' or 'auto'")
    rss: _WaterMark | _RssSampler | None
    if hwm is None or method == "sampled":
        rss = _RssSampler(interval) if _rss_reader() is not None else None
    else:
        rss = hwm
    cuda = _cuda_watermark()
    result = Measurement(method="unavailable" if rss is None else ("hwm" if rss is hwm else "sampled"))
    rss_span = rss.open() if rss is not None else None
    cuda_span = cuda.open() if cuda is not None else None
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - wall
        result.cpu_seconds = time.process_time() - cpu
        if rss is not None:
            assert rss_span is not None  # opened with rss, before the try
            result.peak_mb = rss.close(rss_span) / MIB
        result.cuda_peak_mb = _cuda_peak(cuda, cuda_span)


@dataclass(eq=False)
class _Span:
    base: int
    peak: int


class _WaterMark:
    """A process-wide resettable high-water mark shared by nested/concurrent measurements.

    Opening a span folds the current peak into every open span before resetting, so no span loses its peak.
    """

    def __init__(self, peak: Callable[[], int], reset: Callable[[], None], current: Callable[[], int]) -> None:
        self._peak, self._reset, self._current = peak, reset, current
        self._spans: list[_Span] = []
        self._lock = threading.Lock()

    def open(self) -> _Span:
        with self._lock:
            self._fold()
            self._reset()
            base = self._current()
            span = _Span(base, base)
            self._spans.append(span)
            return span

    def close(self, span: _Span) -> int:
        with self._lock:
            self._fold()
            self._spans = [s for s in self._spans if s is not span]
        return max(0, span.peak - span.base)

    def _fold(self) -> None:
        peak = self._peak()
        for span in self._spans:
            span.peak = max(span.peak, peak)


class _RssSampler:
    """Resident memory polled in a daemon thread (fallback where no kernel high-water mark can be reset)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._read = cast(Callable[[], int], _rss_reader())  # measure() builds a sampler only where a reader exists
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="artmed-measure", daemon=True)

    def open(self) -> _Span:
        base = self._read()
        span = _Span(base, base)
        self._span = span
        self._thread.start()
        return span

    def close(self, span: _Span) -> int:
        self._stop.set()
        self._thread.join()
        span.peak = max(span.peak, self._read())
        return max(0, span.peak - span.base)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._span.peak = max(self._span.peak, self._read())


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_hwm_cache: list[_WaterMark | None] = []
_cuda_marks: dict[int, _WaterMark] = {}


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} missing from {_STATUS}")


def _reset_hwm() -> None:
    with open(_CLEAR_REFS, "w") as handle:
        handle.write("5")


def _rss_watermark() -> _WaterMark | None:
    """The Linux VmHWM watermark, or None where it cannot be read and reset (checked once)."""
    if not _hwm_cache:
        try:
            _reset_hwm()
            _status_bytes("VmHWM")
            _status_bytes("VmRSS")
            _hwm_cache.append(_WaterMark(lambda: _status_bytes("VmHWM"), _reset_hwm, lambda: _status_bytes("VmRSS")))
        except (OSError, ValueError):
            _hwm_cache.append(None)
    return _hwm_cache[0]


def _rss_reader() -> Callable[[], int] | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        process = psutil.Process()
        return lambda: process.memory_info().rss
    statm = Path("/proc/self/statm")
    if statm.is_file():
        page = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(statm.read_text().split()[1]) * page
    return None


def _cuda_watermark() -> _WaterMark | None:
    """torch's CUDA allocator peak on the current device, when torch is imported and CUDA initialised."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    index = torch.cuda.current_device()
    if index not in _cuda_marks:
        _cuda_marks[index] = _WaterMark(
            lambda: torch.cuda.max_memory_allocated(index),
            lambda: torch.cuda.reset_peak_memory_stats(index),
            lambda: torch.cuda.memory_allocated(index),
        )
    return _cuda_marks[index]


def _cuda_peak(mark: _WaterMark | None, span: _Span | None) -> float | None:
    if mark is not None:
        assert span is not None  # measure() opens a span on every mark it has
        return mark.close(span) / MIB
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / MIB  # CUDA first used inside the block: its whole peak
    return None
