"""Cells through Ray's local mode (``artmed run --workers N``): the same tables as the serial run, resume, errors."""

import json
import shutil
import sys
import warnings

import pytest

from artmed.evaluations.harness import Harness, SettingsMismatchError
from artmed.evaluations.study import quick_config, run_study

pytest.importorskip("ray")

_RUN_DEPENDENT = ("provenance.", "config.output_dir", "seconds", "peak_mb", "train_seconds", "train_peak_mb")


def _tables(folder) -> dict[str, list[dict]]:
    """The study's tables without what changes from run to run (timings, provenance, the folder's name)."""
    tables = {}
    for name in ("models", "defenses", "models_summary", "defenses_summary"):
        rows = json.loads((folder / f"{name}.json").read_text())
        tables[name] = [
            {k: v for k, v in row.items() if not any(k.startswith(p) for p in _RUN_DEPENDENT)} for row in rows
        ]
    return tables


def _summary_without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    serial, _ = run_study(quick_config(str(root / "serial")), verbose=False, threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel, _ = run_study(quick_config(str(root / "parallel")), verbose=False, workers=2, threads=1)
    parallel.warned = [str(w.message) for w in caught if w.category.__name__ == "UnexaminedRowsWarning"]
    return root, serial, parallel


def test_the_driver_warns_of_unexamined_rows_once_per_defense(serial_and_parallel):
    _, _, parallel = serial_and_parallel
    counted = {row["defense"] for row in parallel.defenses if row.get("unexamined")}
    assert counted  # the quick study's rare label vectors leave rows unexamined
    assert sorted(message.split(":")[0] for message in parallel.warned) == sorted(counted)


def test_two_workers_give_the_serial_tables(serial_and_parallel):
    root, serial, parallel = serial_and_parallel
    assert not serial.failed and not parallel.failed
    a, b = _tables(root / "serial"), _tables(root / "parallel")
    assert a["models"] == b["models"]
    assert a["defenses"] == b["defenses"]
    assert a["models_summary"] == b["models_summary"]
    assert _summary_without_timings(a["defenses_summary"]) == _summary_without_timings(b["defenses_summary"])
    assert len(a["models"]) == 2 and len(a["defenses"]) == 4
    for name, arrays in serial.arrays.items():  # the defenses' scores too, bit for bit
        for key, value in arrays.items():
            assert (parallel.arrays[name][key] == value).all(), (name, key)


def test_a_resumed_parallel_run_recomputes_only_the_missing_cell(serial_and_parallel, tmp_path):
    root, serial, _ = serial_and_parallel
    folder = tmp_path / "resume"
    shutil.copytree(root / "parallel", folder)
    cells = folder / "cells" / "defense"
    victim = next(cells.glob("baddist_badmatch*+spectral_signatures.json"))
    victim.unlink()
    untouched = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    config = quick_config(str(folder))
    harness = Harness(config, verbose=False, workers=2, threads=1)
    result = harness.run()
    assert victim.exists()
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json") if p.name in untouched} == untouched
    by_cell = {r["cell"]: r for r in result.defenses}
    cell = "defense/" + victim.name.removesuffix(".json")
    assert by_cell[cell]["auroc"] == next(r for r in serial.defenses if r["cell"] == cell)["auroc"]


def test_a_cell_of_other_settings_stops_a_parallel_run(serial_and_parallel, tmp_path):
    root, _, _ = serial_and_parallel
    folder = tmp_path / "other"
    shutil.copytree(root / "parallel", folder)
    next((folder / "cells" / "defense").glob("clean*+spectral*.json")).unlink()
    config = quick_config(str(folder))
    config.defenses[0].params = {"eps": 0.2}  # the remaining cells were computed with other settings
    with pytest.raises(SettingsMismatchError, match="other settings"):
        Harness(config, verbose=False, workers=2, threads=1).run()


def test_workers_without_ray_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"artmed\[ray\]"):
        Harness(quick_config(str(tmp_path / "x")), verbose=False, workers=2).run()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_worker_and_thread_counts_are_refused(bad, tmp_path):
    for name in ("workers", "threads"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            Harness(quick_config(str(tmp_path / "x")), verbose=False, **{name: bad})


def test_more_threads_than_cores_is_warned(monkeypatch):
    from artmed.evaluations import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with pytest.warns(UserWarning, match=r"2 workers x 2 threads oversubscribe the 2 cores.*--threads 1"):
        engine._warn_oversubscribed(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine._warn_oversubscribed(2, 1)


def _cores(monkeypatch, n: int) -> None:
    from artmed.evaluations import engine

    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


def _study(tmp_path):
    """2 attacked models x 3 seeds x 200 steps: enough work for workers."""
    config = quick_config(str(tmp_path / "x"), n_seeds=3)
    config.train.steps = 200
    return config


@pytest.mark.auto_workers
def test_workers_default_to_the_cores_per_thread_count(monkeypatch, tmp_path):
    config = _study(tmp_path)
    _cores(monkeypatch, 4)
    assert Harness(config, verbose=False).workers == 4
    assert Harness(config, verbose=False, threads=2).workers == 2
    _cores(monkeypatch, 16)
    assert Harness(config, verbose=False).workers == 6  # one per attacked model at most
    assert Harness(config, verbose=False, workers=1).workers == 1
    _cores(monkeypatch, 1)
    assert Harness(config, verbose=False, workers=None).workers == 1


@pytest.mark.auto_workers
def test_a_study_too_small_for_rays_start_runs_serially(monkeypatch, tmp_path):
    from artmed.evaluations import engine

    _cores(monkeypatch, 4)
    config = _study(tmp_path)
    config.train.steps = 10  # 6 models x 10 steps: the quick preset's scale
    assert engine.auto_workers(config, 1) == 1
    config.train.steps = engine.AUTO_MIN_STEPS // 6 + 1
    assert engine.auto_workers(config, 1) == 4


@pytest.mark.auto_workers
def test_workers_default_to_one_off_the_cpu_or_under_torchrun(monkeypatch, tmp_path):
    import torch

    from artmed.evaluations import engine

    _cores(monkeypatch, 8)
    config = _study(tmp_path)
    assert engine.auto_workers(config, 1) == 6
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert engine.auto_workers(config, 1) == 1
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr("artmed.device.resolve_device", lambda device: torch.device("cuda"))
    assert engine.auto_workers(config, 1) == 1


@pytest.mark.auto_workers
def test_workers_default_to_one_without_ray_with_a_hint(monkeypatch, tmp_path):
    from artmed.evaluations import engine

    _cores(monkeypatch, 4)
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name: None)
    with pytest.warns(UserWarning, match=r"pip install 'artmed\[ray\]' to run 4 at once"):
        assert Harness(_study(tmp_path), verbose=False).workers == 1


def test_cells_run_on_one_thread_by_default(tmp_path):
    assert Harness(quick_config(str(tmp_path / "x")), verbose=False).threads == 1
