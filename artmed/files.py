"""Crash-safe writing of result files and model folders, with the permissions a plain ``open``/``mkdir`` gives.

``tempfile`` creates its files 0600 and folders 0700 whatever the umask; what is renamed into place from them is
given ``0o666 & ~umask`` (files) or ``0o777 & ~umask`` (folders) first, so a shared results folder stays readable.
A write that fails (disk full, folder not writable) raises ``OutputWriteError`` naming the file and folder, and leaves
the previous file or folder as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "OutputWriteError",
    "atomic_file",
    "current_umask",
    "default_mode",
    "fsync_dir",
    "output_error",
    "staged_directory",
]


class OutputWriteError(OSError, ValueError):
    """A result file or folder could not be written (disk full, no permission): an ``OSError`` that is also a
    ``ValueError``, so ``artmed run`` reports it as an error (exit status 2) instead of a traceback."""


def output_error(path: str | os.PathLike[str], exc: OSError) -> OutputWriteError:
    """``exc`` as an ``OutputWriteError`` naming ``path``, its folder and what to do; what was written before stays."""
    if isinstance(exc, OutputWriteError):
        return exc
    folder = Path(path).parent
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = (
        f"cannot write {path}: {reason} (in folder {folder}); the previous version and everything finished "
        "before are kept: free disk space or make the folder writable, then run again to resume"
    )
    error = OutputWriteError(message)
    error.errno = exc.errno
    return error


def current_umask() -> int:
    """The process umask: read from ``/proc/self/status`` where Linux reports it (nothing changes), else set to
    0o077 and restored at once (so a file another thread creates meanwhile is never more open than intended)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The permission bits ``open(path, "w")`` (or ``mkdir`` for ``directory``) would give under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path (``.<name>.<random>.tmp``) for a writer to fill; when the block ends the file is
    fsynced, given ``default_mode()`` and renamed over ``path``, so ``path`` holds the old file or the whole new one
    (never a file truncated by a full disk). If the block raises, the temp file is removed and ``path`` untouched."""
    target = Path(os.path.abspath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise output_error(target, exc) from exc
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, default_mode())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextmanager
def staged_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary sibling folder (``.<name>.tmp-<random>``) to fill; when the block ends it replaces
    ``path`` (an old folder is renamed away, the new one renamed in, the old one removed), so ``path`` holds the
    previous folder or the complete new one. If the block raises, the sibling is removed and ``path`` untouched."""
    target = Path(os.path.abspath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc) from exc
    try:
        os.chmod(staging, default_mode(directory=True))
        yield staging
        _fsync_tree(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
        try:
            staging.rename(target)
        except BaseException:
            if old is not None:
                old.rename(target)
            raise
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(target, exc) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
