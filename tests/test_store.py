"""ResultStore: atomic cells, resume semantics, corrupt cells treated as missing, provenance."""

import fcntl
import json
import os
import re

import numpy as np
import pytest

from artmed.evaluations import store as store_module
from artmed.evaluations.store import (
    FolderLockedError,
    ResultStore,
    cell_key,
    folder_lock,
    provenance,
    remove_leftovers,
    to_jsonable,
)


def _record(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "attack": "badmatch",
        "percent_poison": np.float32(0.01),
        "seed": np.int64(seed),
        "ca": np.float64(0.875),
        "auroc": float("nan"),
        "flags_small": np.array([True, False]),
        "detection": {"scores": rng.normal(size=500), "flags": rng.random(500) < 0.1},
        "history": [{"step": 1, "ca": 0.5}],
    }


def test_save_load_round_trip(tmp_path):
    store = ResultStore(tmp_path)
    assert not store.has("attack", "a1")
    with pytest.raises(KeyError):
        store.load("attack", "a1")
    rec = _record()
    path = store.save("attack", "a1", rec)
    assert path == store.cell_path("attack", "a1") == tmp_path / "attack" / "a1.json"
    assert store.has("attack", "a1")
    got = store.load("attack", "a1")
    assert got["percent_poison"] == pytest.approx(0.01)
    assert got["seed"] == 0 and isinstance(got["seed"], int)
    assert got["auroc"] is None  # NaN is stored as null
    assert got["flags_small"] == [True, False]  # small arrays inline as lists
    np.testing.assert_array_equal(got["detection"]["scores"], rec["detection"]["scores"])
    np.testing.assert_array_equal(got["detection"]["flags"], rec["detection"]["flags"])
    assert got["detection"]["flags"].dtype == bool
    assert got["history"] == [{"step": 1, "ca": 0.5}]
    assert store.load("attack", "a1", arrays=False)["detection"]["scores"] is None
    # strict JSON: no NaN/Infinity tokens, big arrays live in one npz sidecar
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert len(list((tmp_path / "attack").glob("a1.*.npz"))) == 1
    cell = json.loads(text)
    assert cell["key"] == "a1" and cell["kind"] == "attack" and "provenance" in cell


def test_resave_replaces_sidecar_and_records(tmp_path):
    store = ResultStore(tmp_path)
    store.save("defense", "d1", _record(0))
    store.save("defense", "d1", _record(1))
    store.save("defense", "d0", {"ca": 0.5})
    assert len(list((tmp_path / "defense").glob("*.npz"))) == 1
    assert store.keys("defense") == ["d0", "d1"]
    recs = store.records("defense")
    assert [r.get("seed") for r in recs] == [None, 1]
    np.testing.assert_array_equal(recs[1]["detection"]["scores"], _record(1)["detection"]["scores"])
    assert store.records("nothing_yet") == []


def test_crash_during_save_keeps_previous_cell(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.save("attack", "a1", _record(0))
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", crash_on_json)
    with pytest.raises(OSError, match="simulated crash"):
        store.save("attack", "a1", _record(1))
    monkeypatch.undo()
    folder = tmp_path / "attack"
    assert not list(folder.glob("*.tmp"))  # the failed temp file was removed
    got = store.load("attack", "a1")  # the old cell and its own sidecar are intact
    assert got["seed"] == 0
    np.testing.assert_array_equal(got["detection"]["scores"], _record(0)["detection"]["scores"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_umask_permissions(tmp_path, umask, mode):
    """Cell and sidecar are as readable as ``open(path, "w")`` would make them, not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        path = ResultStore(tmp_path).save("attack", "a1", _record())
    finally:
        os.umask(old)
    files = [path, *(tmp_path / "attack").glob("a1.*.npz")]
    assert len(files) == 2
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(mode)}


def test_leftover_temp_file_is_ignored(tmp_path):
    store = ResultStore(tmp_path)
    store.save("attack", "a1", {"ca": 0.9})
    folder = tmp_path / "attack"
    (folder / ".a2.json.k3j2h1.tmp").write_text('{"format": 1, "rec')  # a writer killed mid-write
    assert store.keys("attack") == ["a1"]
    assert not store.has("attack", "a2")
    assert store.records("attack") == [{"ca": 0.9}]


def test_truncated_cell_is_missing_and_recomputed(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save("attack", "a1", _record())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match="unreadable result cell"):
        assert not store.has("attack", "a1")
    with pytest.warns(UserWarning), pytest.raises(KeyError):
        store.load("attack", "a1")
    with pytest.warns(UserWarning):
        assert store.records("attack") == []
    store.save("attack", "a1", {"ca": 0.5})
    assert store.load("attack", "a1") == {"ca": 0.5}


def test_missing_or_truncated_sidecar_is_missing(tmp_path):
    store = ResultStore(tmp_path)
    store.save("attack", "a1", _record())
    (sidecar,) = (tmp_path / "attack").glob("a1.*.npz")
    sidecar.write_bytes(sidecar.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable"):
        assert not store.has("attack", "a1")
    sidecar.unlink()
    with pytest.warns(UserWarning, match="unreadable"):
        assert not store.has("attack", "a1")


def test_other_json_is_not_a_cell(tmp_path):
    store = ResultStore(tmp_path)
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "a1.json").write_text('{"ca": 0.5}')
    with pytest.warns(UserWarning, match="format 1"):
        assert not store.has("attack", "a1")


def test_mapping_keys_are_stable_and_distinct(tmp_path):
    k1 = cell_key({"attack": "badmatch", "rate": 0.01, "seed": 0})
    assert k1 == cell_key({"seed": 0, "rate": 0.01, "attack": "badmatch"})
    assert k1 != cell_key({"attack": "badmatch", "rate": 0.01, "seed": 1})
    assert cell_key({"t": "a/b"}) != cell_key({"t": "a_b"})
    assert re.fullmatch(r"attack=badmatch,rate=0\.01,seed=0-[0-9a-f]{10}", k1)
    long_key = cell_key({"trigger": {"name": "patch", "size": 32}, "note": "x" * 400})
    assert len(long_key) <= 150
    store = ResultStore(tmp_path)
    store.save("attack", {"seed": 0, "attack": "badmatch"}, {"ca": 1.0})
    assert store.has("attack", {"attack": "badmatch", "seed": 0})


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x" * 200, 3])
def test_bad_names_raise(tmp_path, bad):
    with pytest.raises(ValueError, match="file-safe"):
        ResultStore(tmp_path).save("attack", bad, {"ca": 1.0})


def test_unstorable_values_name_the_field():
    with pytest.raises(ValueError, match=r"record\.model"):
        to_jsonable({"model": object()})
    with pytest.raises(ValueError, match="mapping"):
        ResultStore("/nonexistent").save("attack", "a", [1, 2])


def test_provenance_keys(tmp_path):
    info = provenance()
    assert set(info) >= {"versions", "python", "platform", "git", "timestamp"}
    assert set(info["versions"]) >= {"artmed", "torch", "transformers", "art", "numpy", "sklearn"}
    assert info["versions"]["numpy"] == np.__version__
    git = info["git"]
    assert git is None or (re.fullmatch(r"[0-9a-f]{40}", git["commit"]) and isinstance(git["dirty"], bool))
    assert store_module._git_state(tmp_path) is None  # not a git checkout
    json.dumps(info, allow_nan=False)


def _hold(folder, holder="pid 4242 on elsewhere since 2026-01-01T00:00:00+00:00"):
    """Lock ``folder`` as another run would (a separate open file description), naming ``holder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(holder + "\n")
    fd = os.open(folder / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_folder_lock_refuses_a_second_run_naming_the_holder(tmp_path):
    fd = _hold(tmp_path / "out")
    with pytest.raises(FolderLockedError, match=r"out is in use by another artmed run \(pid 4242 on elsewhere"):
        with folder_lock(tmp_path / "out"):
            pytest.fail("the lock was taken twice")
    os.close(fd)  # the holder exits (or is killed: the OS releases its flock); its lock file stays behind
    with folder_lock(tmp_path / "out"):
        assert (tmp_path / "out" / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
        with folder_lock(tmp_path / "out"):  # re-entrant within the process
            pass
        fd = os.open(tmp_path / "out" / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


def test_folder_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with folder_lock(tmp_path):
            raise RuntimeError("boom")
    os.close(_hold(tmp_path))  # nobody holds it any more


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    models, cells = tmp_path / "models", tmp_path / "cells" / "model"
    staging = models / ".base-s0.tmp-k3j2h1"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"half")
    cells.mkdir(parents=True)
    torn = cells / ".clean-s0.json.a1b2c3.tmp"
    torn.write_text("{")
    (models / "clean-s0").mkdir()
    old = models / ".clean-s0.old-0123abcd"
    old.mkdir()
    orphan = models / ".gone-s0.old-0123abcd"  # its new copy never arrived: the only copy, kept
    orphan.mkdir()
    (cells / "clean-s0.json").write_text("{}")
    assert sorted(remove_leftovers(tmp_path)) == sorted([staging, torn, old])
    assert orphan.is_dir() and (models / "clean-s0").is_dir() and (cells / "clean-s0.json").is_file()
