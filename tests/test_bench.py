"""``artmed bench`` at CI size: it runs end to end, writes the JSON with the ratio fields, and our ART-compatible
spectral signatures flag exactly what ART's SpectralSignatureDefense flags on the same features."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from artmed.evaluations import bench
from artmed.evaluations.bench import labeler_scaling, main, scaling, synthetic_features
from artmed.evaluations.cli import main as cli_main


def test_bench_writes_ratios_and_art_agreement(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # one thread: on 2 busy cores two-thread BLAS/OpenMP calls stall at random (seconds for a 1500 x 512 SVD)
    args = [
        "--sizes",
        "1500",
        "--study",
        "none",
        "--extract",
        "tiny",
        "--batches",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads(out.read_text())
    rows = {row["comparison"]: row for row in data["detection"]}
    assert set(rows) == {
        "SS art-mode vs ART SS",
        "SS centered vs ART SS",
        "AC art-mode vs ART AC",
        "AC artmed vs ART AC",
        "AC artmed vs ART AC (FastICA)",
    }
    for row in rows.values():
        assert row["n"] == 1500
        assert row["ratio"] == pytest.approx(row["art_s"] / row["ours_s"])
        assert row["peak_mb_ours"] is not None and row["peak_mb_art"] is not None
    assert rows["SS art-mode vs ART SS"]["agreement"] == 1.0
    assert rows["SS art-mode vs ART SS"]["disagreements"] == 0
    assert rows["AC artmed vs ART AC"]["f1_ours"] > rows["AC artmed vs ART AC"]["f1_art"]
    assert set(data["scaling"]) == {
        "ss_art_mode",
        "ss_centered",
        "spectre",
        "art_ss",
        "ac_art_mode",
        "ac_artmed",
        "art_ac",
        "art_ac_ica",
    }
    (spectre,) = data["spectre"]
    assert spectre["n"] == 1500 and spectre["time_ratio"] == pytest.approx(spectre["spectre_s"] / spectre["ss_s"])
    assert spectre["tpr_spectre"] >= spectre["tpr_ss"]  # measured: both flag all 15 poisons among 1.5 eps of each group
    (extraction,) = data["extraction"]
    assert extraction["preset"] == "tiny" and extraction["get_activations_img_s"] > 0
    machine = data["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1 and machine["versions"]["art"]
    assert "study" not in data
    printed = capsys.readouterr().out
    assert "SS art-mode vs ART SS" in printed and "SPECTRE beside SS centered" in printed


def test_skip_art_above_and_thread_cap(tmp_path):
    out = tmp_path / "b.json"
    threads = torch.get_num_threads()
    args = [
        "--sizes",
        "501",
        "--skip-art-above",
        "500",
        "--threads",
        "1",
        "--study",
        "none",
        "--extract",
        "none",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert all(row["ours_s"] > 0 and "art_s" not in row and "ratio" not in row for row in data["detection"])
    assert data["machine"]["torch_threads_used"] == 1 and torch.get_num_threads() == threads
    assert data["machine"]["torch_threads"] == threads


def test_training_throughput_alone(tmp_path, capsys):
    """``--sizes`` with no value skips the detection benchmark; ``--train`` times unpaired fit per preset."""
    out = tmp_path / "t.json"
    args = [
        "--sizes",
        "--extract",
        "none",
        "--study",
        "none",
        "--train",
        "tiny",
        "--train-steps",
        "2",
        "--train-batch",
        "4",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert data["detection"] == [] and data["extraction"] == []
    (row,) = data["training"]
    assert (row["preset"], row["batch_size"], row["steps"]) == ("tiny", 4, 2)
    assert row["s_per_1000_images"] == pytest.approx(1000 / row["img_s"])
    assert "Unpaired training" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--train-batch must be >= 2, got 1"):
        main(["--sizes", "--train", "tiny", "--train-batch", "1", "--out", str(out)])


def test_cli_routes_help_and_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--skip-art-above" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--sizes", "10"])
    assert "at least" in capsys.readouterr().err


def test_synthetic_features_are_seeded_and_planted():
    a, b = synthetic_features(2000, dim=32, seed=3), synthetic_features(2000, dim=32, seed=3)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.dtype == np.float32 and a.features.shape == (2000, 32)
    assert a.poison_mask.sum() == 20
    groups = a.labels.argmax(1)
    assert set(groups[a.poison_mask].tolist()) == {0}
    assert np.bincount(groups).tolist() == [800, 600, 400, 200]


def test_scaling_flags_superlinear_cost():
    runs = {
        1000: {"x": {"us_per_sample": 1.0}},
        10000: {"x": {"us_per_sample": 1.5}},
        100000: {"x": {"us_per_sample": 9.0}},
    }
    assert scaling({k: v for k, v in runs.items() if k < 100000})["x"]["at_most_linear"] is True
    assert scaling(runs)["x"]["at_most_linear"] is False
    assert scaling(runs)["x"]["growth"] == pytest.approx(9.0)
    cheaper_per_sample = {1000: {"x": {"us_per_sample": 9.0}}, 100000: {"x": {"us_per_sample": 2.0}}}
    assert scaling(cheaper_per_sample)["x"]["at_most_linear"] is True


def test_too_many_groups_for_the_size_rejected():
    with pytest.raises(ValueError, match="smallest label group"):
        main(["--sizes", "600", "--groups", "8", "--extract", "none", "--study", "none"])


def test_thread_limit_caps_pools_loaded_by_scipy_and_sklearn():
    """In a fresh interpreter: the cap reaches every pool, scipy's own OpenBLAS and scikit-learn's OpenMP included."""
    code = (
        "from threadpoolctl import threadpool_info\n"
        "from artmed.evaluations.bench import thread_limit\n"
        "with thread_limit(1):\n"
        "    import scipy.linalg, sklearn.cluster\n"
        "    pools = threadpool_info()\n"
        "print(sorted({p['internal_api'] for p in pools}), max(p['num_threads'] for p in pools))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith(" 1") and "openmp" in out


def test_labeler_scaling_is_an_optional_section(tmp_path, monkeypatch, capsys):
    rows = labeler_scaling([2_000, 4_000])
    assert [row["bytes"] for row in rows] == [1993, 3993]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(rows[1]["seconds"] / rows[0]["seconds"])
    assert rows[1]["size_ratio"] == pytest.approx(3993 / 1993) and all(row["seconds"] > 0 for row in rows)
    monkeypatch.setattr(bench.cli, "LABELER_SIZES", (2_000, 4_000))  # where main reads it
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "--sizes",
                "501",
                "--skip-art-above",
                "500",
                "--threads",
                "1",
                "--study",
                "none",
                "--extract",
                "none",
                "--labeler",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [row["bytes"] for row in json.loads(out.read_text())["labeler"]] == [1993, 3993]
    assert "Report labeler on one long sentence" in capsys.readouterr().out
    assert bench.build_parser().parse_args([]).labeler is False  # off unless asked for
