"""Result tables round-trip through JSON/CSV; every figure writes a PNG from synthetic records, NaN included."""

import json
import math

import numpy as np
import pytest
from sklearn.decomposition import PCA

from artmed.defenses.base import DetectionResult
from artmed.evaluations import report
from artmed.evaluations.report import (
    plot_inverted_trigger,
    format_table,
    plot_ca_asr_bars,
    plot_detection_roc,
    plot_feature_projection,
    plot_poison_rate_sweep,
    plot_score_histograms,
    read_table,
    write_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _records():
    """An attack × trigger × rate × seed grid, plus defense rows; some values missing or NaN."""
    out = []
    for attack in ("badmatch", "baddist"):
        for trigger in ("patch", "fourier"):
            for rate in (0.0005, 0.005, 0.05):
                for seed in (0, 1):
                    asr = min(1.0, 0.2 + 10 * rate + 0.01 * seed)
                    out.append({"attack": attack, "trigger": {"name": trigger, "size": 8}, "percent_poison": rate,
                                "seed": seed, "ca": 0.8 - rate, "asr": asr, "cost": {"seconds": 1.5}})
    for defense, kind in (("spectral", "detection"), ("fine_pruning", "mitigation")):
        out.append({"attack": "badmatch", "trigger": "patch", "percent_poison": 0.005, "seed": 0, "defense": defense,
                    "defense_kind": kind, "ca": 0.8, "asr": 0.9, "ca_after": 0.78, "asr_after": 0.1,
                    "auroc": 0.93 if kind == "detection" else float("nan"), "scores": np.arange(10.0)})
    out.append({"attack": "badmatch", "trigger": "patch", "percent_poison": float("nan"), "ca": None, "asr": "n/a"})
    return out


def _png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000
    assert not list(path.parent.glob("*.tmp"))


def test_table_round_trip(tmp_path):
    recs = _records()
    json_path, csv_path = write_table(recs, tmp_path / "out", name="grid")
    assert json_path.name == "grid.json" and csv_path.name == "grid.csv"
    rows = read_table(json_path)
    assert len(rows) == len(recs)
    columns = list(rows[0])
    assert columns[:6] == ["attack", "trigger", "percent_poison", "seed", "defense", "defense_kind"]
    assert columns.index("ca") < columns.index("asr") < columns.index("auroc") < columns.index("cost.seconds")
    assert "scores" not in columns  # arrays are not table cells
    assert rows[0]["trigger.name"] == "patch" and rows[0]["cost.seconds"] == 1.5
    assert rows[-3]["auroc"] == 0.93 and rows[-2]["auroc"] is None and rows[0]["defense"] is None
    json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert read_table(csv_path) == rows
    # stable order: shuffling the records gives the same columns
    shuffled = write_table(recs[::-1], tmp_path / "out2")[0]
    assert list(read_table(shuffled)[0]) == columns


def test_format_table():
    text = format_table(_records()[-3:], columns=["defense", "ca_after", "asr_after", "auroc"])
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "defense"
    assert lines[1].startswith("|") and lines[1].endswith(":|")  # numeric column right-aligned
    assert "| spectral" in lines[2] and "0.93" in lines[2]
    assert lines[3].rstrip("| ").endswith("-")  # NaN AUROC shows as missing
    assert lines[4].split("|")[1].strip() == "-"  # record without defense
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError, match="column"):
        format_table([], columns=[])


def test_figures_write_png(tmp_path):
    rng = np.random.default_rng(0)
    recs = _records()
    mask = np.zeros(300, dtype=bool)
    mask[:15] = True
    good = rng.normal(size=300) + 3 * mask
    nan_scores = good.copy()
    nan_scores[[3, 50]] = np.nan
    detection = DetectionResult(good, good > 2.5)
    rocs = {"spectral": (good, mask), "ac": (nan_scores, mask, nan_scores > 2), "art": (detection, mask),
            "one_class": (good, np.zeros(300, dtype=bool))}
    _png(plot_detection_roc(rocs, tmp_path / "roc.png"))
    _png(plot_ca_asr_bars(recs, tmp_path / "bars.png"))
    _png(plot_score_histograms({"spectral": good, "ac": (nan_scores, mask), "art": detection}, mask,
                               tmp_path / "hist.png", title="scores"))
    _png(plot_score_histograms(good, mask, tmp_path / "hist1.png"))
    feats = rng.normal(size=(300, 2, 4, 4)) + mask[:, None, None, None]
    feats[7, 0, 0, 0] = np.nan
    _png(plot_feature_projection(feats, mask, tmp_path / "pca.png", max_points=100))
    _png(plot_poison_rate_sweep(recs, tmp_path / "sweep.png"))
    mask = np.zeros((16, 16))
    mask[-4:, -4:] = 1.0
    _png(plot_inverted_trigger(mask, np.random.default_rng(0).random((3, 16, 16)), tmp_path / "inv.png"))
    _png(plot_inverted_trigger(mask, np.zeros((1, 16, 16)), tmp_path / "inv1.png"))
    _png(plot_inverted_trigger(mask, None, tmp_path / "inv0.png"))


def test_inverted_trigger_errors_name_the_array(tmp_path):
    with pytest.raises(ValueError, match="mask must be a finite"):
        plot_inverted_trigger(np.full((4, 4), np.nan), None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pattern must be"):
        plot_inverted_trigger(np.zeros((4, 4)), np.zeros((3, 5, 5)), tmp_path / "x.png")


def test_figures_tolerate_empty_and_nan_input(tmp_path):
    nan_recs = [{"attack": "a", "percent_poison": 0.01, "ca": float("nan"), "asr": None}, {"percent_poison": 0}]
    _png(plot_detection_roc({}, tmp_path / "roc.png"))
    _png(plot_ca_asr_bars(nan_recs, tmp_path / "bars.png"))
    _png(plot_ca_asr_bars([], tmp_path / "bars0.png"))
    _png(plot_score_histograms({}, None, tmp_path / "hist.png"))
    _png(plot_score_histograms(np.full(5, np.nan), np.ones(5, dtype=bool), tmp_path / "hist_nan.png"))
    _png(plot_feature_projection(np.full((4, 3), np.nan), np.zeros(4), tmp_path / "pca.png"))
    _png(plot_poison_rate_sweep(nan_recs, tmp_path / "sweep.png"))


def test_figure_input_errors(tmp_path):
    with pytest.raises(ValueError, match="spectral"):
        plot_detection_roc({"spectral": (np.zeros(5), np.zeros(4))}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="mask"):
        plot_feature_projection(np.zeros((5, 2)), np.zeros(4), tmp_path / "pca.png")


def test_pca_matches_sklearn_up_to_sign():
    x = np.random.default_rng(1).normal(size=(200, 6)) * np.array([5, 3, 1, 1, 0.5, 0.1])
    points, ratio = report._pca2(x)
    ref = PCA(n_components=2).fit(x)
    np.testing.assert_allclose(np.abs(points), np.abs(ref.transform(x)), atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)
    wide_points, _ = report._pca2(x[:4])  # more dims than rows: the SVD path
    assert wide_points.shape == (4, 2) and not np.isnan(wide_points).any()
    assert math.isclose(float(report._pca2(x[:, :1])[1][1]), 0.0)
