"""One place that turns a user's ``device`` setting into a torch device, and the CPU threading work runs under:
one thread for the detectors' small-matrix loops, a fixed count for a study's cells and the benchmarks."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return ``cuda`` when ``device="auto"`` and a GPU is present, else the named device."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run on one CPU thread: many small matrix steps (ICA, Lloyd, k x k whitening) gain nothing from threads, and on
    a busy machine spinning worker threads slow them down by an order of magnitude (measured 20-50x on 2 shared
    cores). A no-op on other devices."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Cap torch's threads and every BLAS/OpenMP pool numpy, scipy and scikit-learn use (threadpoolctl) inside the
    block: a study's cells run on the same count in every process (it changes floating-point results), the
    benchmarks' sides on the same count as ART's; None leaves all thread settings untouched."""
    if threads is None:
        yield
        return
    # threadpoolctl caps only the pools already loaded: scipy and scikit-learn bring their own OpenBLAS / OpenMP
    import scipy.linalg  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)
