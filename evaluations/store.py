"""A results store for resumable experiment grids: one JSON cell per finished (kind, key), written atomically.

Layout: ``root/<kind>/<key>.json`` holds ``{"format", "kind", "key", "saved_at", "provenance", "arrays", "record"}``.
Arrays with more than ``inline_max`` elements (per-sample scores, flags) go to a sidecar
``root/<kind>/<key>.<token>.npz`` and the JSON holds ``{"__npz__": name, "shape", "dtype"}`` in their place. The npz is
written first and the JSON last, each via a temp file + fsync + ``os.replace``, so a crash leaves either the old cell
or the new one; a torn, truncated or dangling cell is reported with a warning and treated as missing (re-computed).

JSON is strict (RFC 8259): numpy scalars become Python numbers, small arrays lists, and NaN/±inf become ``null`` —
a loaded record holds ``None`` where a NaN was saved (the report functions treat ``None`` as missing).

One run at a time writes an output folder: ``folder_lock`` holds ``<folder>/.lock`` (flock, naming the holder) for the
run, and ``remove_leftovers`` then clears what a killed writer left half-written.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import importlib
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np

from artmed.distributed import all_reduce_mean, barrier, is_main_process
from artmed.files import OutputWriteError, default_mode, fsync_dir, output_error

__all__ = [
    "FolderLockedError",
    "OutputWriteError",
    "ResultStore",
    "atomic_write",
    "cell_key",
    "folder_lock",
    "provenance",
    "remove_leftovers",
    "source_hash",
    "to_jsonable",
    "tree_hash",
]

FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
_MAX_NAME = 150
_DISTRIBUTIONS = {
    "artmed": "artmed",
    "torch": "torch",
    "transformers": "transformers",
    "art": "adversarial-robustness-toolbox",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
}


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one: temp file, fsync, os.replace.

    The file gets the permissions ``open(path, "w")`` would give (``0o666 & ~umask``), not mkstemp's 0600. A failed
    write (disk full, folder not writable) is an ``OutputWriteError`` naming the file and its folder.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), default_mode())
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


class FolderLockedError(ValueError):
    """Another process holds the output folder's lock: two runs writing one folder would overwrite each other's
    cells."""


_HELD: dict[Path, int] = {}
"""Output folders this process holds the lock of, with how many ``folder_lock`` blocks hold it (re-entrant)."""
_FDS: dict[Path, int] = {}
"""The open ``.lock`` file of each folder in ``_HELD`` (rank 0's): closing it releases the flock."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block: ``flock`` on ``folder/.lock``, which names the holder (PID,
    host, start time). Another process asking for it gets a ``FolderLockedError`` naming the holder at once. The OS
    releases an flock when its process dies, so a lock file left by a killed run blocks nothing. Re-entrant within a
    process. Under ``torchrun`` rank 0 alone takes it, and every rank raises when rank 0 could not (no rank is left
    waiting in a collective)."""
    folder = Path(folder).absolute()
    error = _take_lock(folder) if is_main_process() and folder not in _HELD else None
    refused = float(all_reduce_mean(1.0 if error else 0.0)) > 0
    if error is not None:
        raise error
    if refused:
        raise FolderLockedError(f"output folder {folder} is in use by another artmed run (see rank 0's error)")
    _HELD[folder] = _HELD.get(folder, 0) + 1
    try:
        yield
    finally:
        _HELD[folder] -= 1
        if not _HELD[folder]:
            del _HELD[folder]
            fd = _FDS.pop(folder, None)
            if fd is not None:
                os.close(fd)


def _take_lock(folder: Path) -> FolderLockedError | None:
    """Lock ``folder`` for this process (its descriptor kept in ``_FDS``), or the error naming the holder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = path.read_text(encoding="utf-8", errors="replace").strip() or "a process that has not said who it is"
        return FolderLockedError(
            f"output folder {folder} is in use by another artmed run ({holder}); wait for it to "
            "finish or use another output folder"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
    _FDS[folder] = fd
    return None


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove what a killed writer left under ``folder``: staging folders of model saves (``.<name>.tmp-*``), temp
    files of atomic writes (``.<name>.<random>.tmp``) and the old copy of a replaced folder (``.<name>.old-*``) whose
    new copy is in place. Only safe while ``folder_lock`` is held (no live writer); returns what it removed."""
    removed = []
    for path in sorted(Path(folder).rglob(".*")):
        if _leftover(path):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _leftover(path: Path) -> bool:
    """True for a staging folder, an atomic write's temp file, or a replaced folder's old copy beside its new one."""
    if re.match(r"^\..+\.tmp-[^/]+$", path.name):
        return path.is_dir()
    if re.match(r"^\..+\.tmp$", path.name):
        return path.is_file()
    old = re.match(r"^\.(.+)\.old-[0-9a-f]{8}$", path.name)
    return old is not None and path.is_dir() and (path.parent / old.group(1)).exists()


def cell_key(parts: Mapping[str, Any]) -> str:
    """A stable file-safe key for a grid cell, e.g. ``attack=badmatch,rate=0.01,seed=0-3f2a9c1b07``.

    Readable ``name=value`` pairs in sorted order (unsafe characters replaced, long keys cut) plus a hash of the
    exact values, so two different cells never share a key.
    """
    if not isinstance(parts, Mapping) or not parts:
        raise ValueError(f"cell key parts must be a non-empty mapping, got {parts!r}")
    canonical = json.dumps(to_jsonable(dict(parts)), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:10]
    readable = ",".join(f"{k}={_short(v)}" for k, v in sorted((str(k), v) for k, v in parts.items()))
    readable = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", readable).strip("._-,=+")[: _MAX_NAME - 11]
    return f"{readable}-{digest}" if readable else digest


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("name", value.get("type", "x"))
    return str(value)


def to_jsonable(obj: Any, path: str = "record") -> Any:
    """``obj`` as strict-JSON-ready Python: numpy scalars/arrays to numbers/lists, NaN/±inf to None, tuples to lists.

    Dataclasses become dicts, paths strings; anything else that JSON cannot hold raises ValueError naming ``path``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise ValueError(f"{path}: arrays of dtype {obj.dtype} cannot be stored")
        return to_jsonable(obj.tolist(), path)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, np.integer)) or isinstance(k, bool):
                raise ValueError(f"{path}: keys must be strings or integers, got {k!r}")
            out[str(k)] = to_jsonable(v, f"{path}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), path)
    raise ValueError(f"{path}: a value of type {type(obj).__name__} cannot be stored as JSON")


class ResultStore:
    """Finished grid cells on disk under ``root``, grouped by ``kind`` ("attack", "defense", ...), one file per key.

    ``key`` is a file-safe string (letters, digits, ``._=,+-``) or a mapping turned into one by ``cell_key``.
    Arrays larger than ``inline_max`` elements are kept in an npz sidecar and come back as numpy arrays on load.
    """

    def __init__(self, root: str | Path, inline_max: int = 64) -> None:
        if isinstance(inline_max, bool) or not isinstance(inline_max, int) or inline_max < 0:
            raise ValueError(f"inline_max must be a non-negative integer, got {inline_max!r}")
        self.root = Path(root)
        self.inline_max = inline_max
        self._provenance: dict[str, Any] | None = None

    def cell_path(self, kind: str, key: str | Mapping[str, Any]) -> Path:
        """Path of the JSON cell file for ``(kind, key)`` (it may not exist yet)."""
        return self.root / _check_name(kind, "kind") / f"{self._key(key)}.json"

    def has(self, kind: str, key: str | Mapping[str, Any]) -> bool:
        """True when a complete, readable cell exists (a corrupt one warns and counts as missing)."""
        return self._read(kind, key, arrays=False) is not None

    def load(self, kind: str, key: str | Mapping[str, Any], arrays: bool = True) -> dict[str, Any]:
        """The saved record; its large arrays are loaded from the sidecar unless ``arrays=False`` (then None).

        Raises KeyError when the cell is missing or unreadable (the latter also warns).
        """
        record = self._read(kind, key, arrays=arrays)
        if record is None:
            raise KeyError(f"no readable result cell {self.cell_path(kind, key)}")
        return record

    def save(self, kind: str, key: str | Mapping[str, Any], record: Mapping[str, Any]) -> Path:
        """Write ``record`` atomically (sidecar npz first, then the JSON cell); returns the cell path. Inside a
        ``torchrun`` process group rank 0 writes and every rank waits for it, so all ranks read the same cells."""
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a mapping, got {type(record).__name__}")
        path = self.cell_path(kind, key)
        if is_main_process():
            self._write(path, kind, record)
        barrier()
        return path

    def _write(self, path: Path, kind: str, record: Mapping[str, Any]) -> None:
        stem = path.name[: -len(".json")]
        arrays: dict[str, np.ndarray] = {}
        body = to_jsonable(self._extract_arrays(record, arrays, "record"))
        npz_name = None
        if arrays:
            npz_name = f"{stem}.{uuid.uuid4().hex[:12]}.npz"
            buffer = _npz_bytes(arrays)
            atomic_write(path.parent / npz_name, buffer)
        cell = {
            "format": FORMAT,
            "kind": kind,
            "key": stem,
            "saved_at": _now(),
            "provenance": self.provenance(),
            "arrays": npz_name,
            "record": body,
        }
        atomic_write(path, json.dumps(cell, allow_nan=False, indent=1))
        self._remove_stale_sidecars(path, keep=npz_name)

    def keys(self, kind: str) -> list[str]:
        """Keys of the cell files of ``kind`` in sorted order (unreadable ones included; ``records`` skips them)."""
        folder = self.root / _check_name(kind, "kind")
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len(".json")] for p in folder.glob("*.json") if _NAME.match(p.name))

    def records(self, kind: str, arrays: bool = True) -> list[dict[str, Any]]:
        """Every readable record of ``kind``, in key order; corrupt cells are skipped with a warning."""
        out = []
        for key in self.keys(kind):
            record = self._read(kind, key, arrays=arrays)
            if record is not None:
                out.append(record)
        return out

    def provenance(self) -> dict[str, Any]:
        """This process's ``provenance()``, computed once per store and saved with every cell."""
        if self._provenance is None:
            self._provenance = provenance()
        return self._provenance

    def _key(self, key: str | Mapping[str, Any]) -> str:
        return cell_key(key) if isinstance(key, Mapping) else _check_name(key, "key")

    def _extract_arrays(self, obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
        if isinstance(obj, np.ndarray) and obj.size > self.inline_max:
            if obj.dtype.kind not in "biuf":
                raise ValueError(f"{path}: arrays of dtype {obj.dtype} cannot be stored")
            name = f"a{len(arrays)}"
            arrays[name] = obj
            return {"__npz__": name, "shape": list(obj.shape), "dtype": str(obj.dtype)}
        if isinstance(obj, Mapping):
            return {k: self._extract_arrays(v, arrays, f"{path}.{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self._extract_arrays(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)]
        return obj

    def _read(self, kind: str, key: str | Mapping[str, Any], arrays: bool) -> dict[str, Any] | None:
        path = self.cell_path(kind, key)
        if not path.is_file():
            return None
        try:
            cell = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(cell, dict) or cell.get("format") != FORMAT or not isinstance(cell.get("record"), dict):
                raise ValueError("not a result cell of format 1")
            record = cell["record"]
            if cell.get("arrays"):
                with np.load(path.parent / cell["arrays"], allow_pickle=False) as npz:
                    record = _restore_arrays(record, npz, arrays)
            return record
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            warnings.warn(
                f"ignoring unreadable result cell {path} ({type(exc).__name__}: {exc}); it will be recomputed",
                stacklevel=3,
            )
            return None

    def _remove_stale_sidecars(self, path: Path, keep: str | None) -> None:
        stem = re.escape(path.name[: -len(".json")])
        pattern = re.compile(rf"^{stem}\.[0-9a-f]{{12}}\.npz$")
        for p in path.parent.iterdir():
            if p.name != keep and pattern.match(p.name):
                p.unlink(missing_ok=True)


def _restore_arrays(obj: Any, npz: Any, load: bool) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__npz__", "shape", "dtype"}:
            if obj["__npz__"] not in npz.files:
                raise KeyError(f"array {obj['__npz__']!r} missing from the sidecar")
            return npz[obj["__npz__"]] if load else None
        return {k: _restore_arrays(v, npz, load) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_arrays(v, npz, load) for v in obj]
    return obj


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **cast("dict[str, Any]", arrays))  # numpy's stub: a key could be allow_pickle
    return buffer.getvalue()


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.match(name):
        raise ValueError(
            f"{what} must be a non-empty file-safe name (letters, digits, '._=,+-', at most {_MAX_NAME} characters, "
            f"not starting with punctuation), got {name!r}"
        )
    return name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 over artmed's Python source (every ``.py`` of its four package folders, by relative path): the code a
    result was computed with, installed or checked out, committed or not (a dirty tree hashes differently)."""
    packages = ("artmed", "artmed.attacks", "artmed.defenses", "artmed.evaluations")
    return tree_hash({name: _package_dir(name) for name in packages})


def _package_dir(name: str) -> Path:
    """The folder of the (regular, ``__init__.py``) package ``name``."""
    file = importlib.import_module(name).__file__
    assert file is not None  # a regular package has an __init__.py
    return Path(file).parent


def tree_hash(roots: Mapping[str, Path]) -> str:
    """SHA-256 over the ``.py`` files under each named root, by name and relative path. A root whose subfolder is
    itself one of the named packages (``artmed/attacks`` in a wheel install) leaves that subfolder to its own name,
    so a checkout and an install of the same code hash alike."""
    digest = hashlib.sha256()
    for name, root in sorted(roots.items()):
        nested = {other.rsplit(".", 1)[-1] for other in roots if other.startswith(f"{name}.")}
        for path in sorted(Path(root).rglob("*.py")):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or (len(relative.parts) > 1 and relative.parts[0] in nested):
                continue
            digest.update(f"{name}/{relative.as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def provenance() -> dict[str, Any]:
    """Where a result came from: package versions, Python, platform, the artmed git commit (+ dirty flag), the hash
    of artmed's source (``source_hash``), time.

    ``git`` is None unless the artmed source tree is a git checkout (an editable install of the repository).
    """
    versions: dict[str, str | None] = {}
    for short, dist in _DISTRIBUTIONS.items():
        try:
            versions[short] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[short] = None
    info: dict[str, Any] = {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git_state(Path(__file__).resolve().parent),
        "source_hash": source_hash(),
        "timestamp": _now(),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _git_state(folder: Path) -> dict[str, Any] | None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if not _is_artmed_repo(top):
            return None
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _is_artmed_repo(top: Path) -> bool:
    try:
        text = (top / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return re.search(r'^name\s*=\s*"artmed"', text, flags=re.MULTILINE) is not None
