"""Result tables round-trip through JSON/CSV; every figure writes a PNG from synthetic records, NaN included, and
none is drawn from no data or from a single point (NoFigureWarning, no file)."""

import json
import math

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score, roc_curve

from artmed.defenses.base import DetectionResult
from artmed.evaluations import report
from artmed.evaluations.report import (
    NoFigureWarning,
    format_table,
    mean_roc,
    plot_baddist_separation,
    plot_ca_asr_bars,
    plot_detection_roc,
    plot_feature_projection,
    plot_heatmap,
    plot_inverted_trigger,
    plot_mean_roc,
    plot_poison_rate_sweep,
    plot_score_histograms,
    plot_tradeoff,
    plot_trigger_examples,
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
                    out.append(
                        {
                            "attack": attack,
                            "trigger": {"name": trigger, "size": 8},
                            "percent_poison": rate,
                            "seed": seed,
                            "ca": 0.8 - rate,
                            "asr": asr,
                            "cost": {"seconds": 1.5},
                        }
                    )
    for defense, kind in (("spectral", "detection"), ("fine_pruning", "mitigation")):
        out.append(
            {
                "attack": "badmatch",
                "trigger": "patch",
                "percent_poison": 0.005,
                "seed": 0,
                "defense": defense,
                "defense_kind": kind,
                "ca": 0.8,
                "asr": 0.9,
                "ca_after": 0.78,
                "asr_after": 0.1,
                "auroc": 0.93 if kind == "detection" else float("nan"),
                "scores": np.arange(10.0),
            }
        )
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
    rocs = {
        "spectral": (good, mask),
        "ac": (nan_scores, mask, nan_scores > 2),
        "art": (detection, mask),
        "one_class": (good, np.zeros(300, dtype=bool)),
    }
    _png(plot_detection_roc(rocs, tmp_path / "roc.png"))
    _png(plot_ca_asr_bars(recs, tmp_path / "bars.png"))
    _png(
        plot_score_histograms(
            {"spectral": good, "ac": (nan_scores, mask), "art": detection}, mask, tmp_path / "hist.png", title="scores"
        )
    )
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


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures the plot functions save, in order (the PNGs are still written)."""
    figures = []
    save = report.save_figure

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def _skipped(tmp_path, name, reason, plot, *args, **kwargs):
    """``plot`` draws nothing for these inputs: returns None, warns why, and removes a stale file of that name."""
    path = tmp_path / name
    path.write_bytes(PNG + b"stale figure of an earlier run")
    with pytest.warns(NoFigureWarning, match=f"{name} not drawn: .*{reason}"):
        assert plot(*args, path, **kwargs) is None
    assert not path.exists()


def test_figures_skip_empty_and_nan_input(tmp_path):
    nan_recs = [{"attack": "a", "percent_poison": 0.01, "ca": float("nan"), "asr": None}, {"percent_poison": 0}]
    _skipped(tmp_path, "roc.png", "both poisoned and clean", plot_detection_roc, {})
    _skipped(
        tmp_path,
        "roc1.png",
        "both poisoned and clean",
        plot_detection_roc,
        {"one_class": (np.arange(5.0), np.zeros(5, dtype=bool))},
    )
    _skipped(
        tmp_path,
        "mean_roc.png",
        "both poisoned and clean",
        plot_mean_roc,
        {"one_class": [(np.arange(5.0), np.ones(5, dtype=bool))]},
    )
    _skipped(tmp_path, "bars.png", "after a defense", plot_ca_asr_bars, nan_recs)
    _skipped(tmp_path, "bars0.png", "after a defense", plot_ca_asr_bars, [])
    _skipped(tmp_path, "hist.png", "no finite scores", plot_score_histograms, {}, None)
    _skipped(
        tmp_path, "hist_nan.png", "no finite scores", plot_score_histograms, np.full(5, np.nan), np.ones(5, dtype=bool)
    )
    _skipped(tmp_path, "pca.png", "0 row", plot_feature_projection, np.full((4, 3), np.nan), np.zeros(4))
    _skipped(tmp_path, "sweep.png", "two or more poison rates", plot_poison_rate_sweep, nan_recs)
    _skipped(
        tmp_path,
        "heat.png",
        "no cell has a finite value",
        plot_heatmap,
        {("spectral", "badmatch"): (float("nan"), 0.1)},
        title="AUROC",
    )
    _skipped(tmp_path, "sep.png", "no model has held-out BadDist cosines", plot_baddist_separation, nan_recs)
    _skipped(tmp_path, "trade.png", "more than one model", plot_tradeoff, [])


def test_sweep_needs_two_rates_per_line(tmp_path, drawn):
    one_rate = [
        {"attack": "badmatch", "trigger": "patch", "percent_poison": 0.01, "seed": s, "ca": 0.8, "asr": 0.9}
        for s in (0, 1, 2)
    ]
    clean = {"attack": "clean", "percent_poison": 0.0, "ca": 0.8, "asr": 0.1}
    _skipped(tmp_path, "sweep.png", "two or more poison rates", plot_poison_rate_sweep, one_rate + [clean])
    fourier = [{**r, "trigger": "fourier", "percent_poison": rate} for r in one_rate[:1] for rate in (0.001, 0.01)]
    _png(plot_poison_rate_sweep(one_rate + fourier + [clean], tmp_path / "sweep2.png"))
    asr_axis = drawn[-1].axes[0]
    assert [text.get_text() for text in asr_axis.get_legend().get_texts()] == ["badmatch · fourier"]
    assert len(asr_axis.lines) >= 1 and list(asr_axis.lines[0].get_xdata()) == [0.001, 0.01]


def test_ca_asr_bars_show_before_and_after(tmp_path, drawn):
    attack = {"attack": "badmatch", "trigger": "patch", "percent_poison": 0.01}
    rows = [
        {
            **attack,
            "defense": "fine_pruning",
            "seed": s,
            "ca_before": 0.8,
            "asr_before": 0.9,
            "ca_after": 0.7 + 0.02 * s,
            "asr_after": 0.1,
        }
        for s in (0, 1)
    ]
    rows.append(
        {
            **attack,
            "defense": "cleanclip",
            "seed": 0,
            "ca": 0.8,
            "asr": 0.95,
            "ca_after": 0.75,
            "asr_after": float("nan"),
        }
    )
    rows.append({**attack, "defense": "spectral", "seed": 0, "ca_before": 0.8, "asr_before": 0.9})
    _png(plot_ca_asr_bars(rows, tmp_path / "bars.png"))
    ca_axis, asr_axis = drawn[-1].axes[:2]
    assert [t.get_text() for t in ca_axis.get_yticklabels()] == [
        "badmatch/patch 1% · fine_pruning",
        "badmatch/patch 1% · cleanclip",
    ]  # spectral: no after
    for axis, before, after in ((ca_axis, [0.8, 0.8], [0.71, 0.75]), (asr_axis, [0.9, 0.95], [0.1, 0.0])):
        assert [t.get_text() for t in axis.get_legend().get_texts()] == ["before", "after"]
        bars = [c for c in axis.containers if hasattr(c, "patches")]
        assert [p.get_width() for p in bars[0].patches] == pytest.approx(before)
        assert [p.get_width() for p in bars[1].patches] == pytest.approx(after)
        assert all(p.get_height() == pytest.approx(0.4) for b in bars for p in b.patches)  # horizontal bars


def test_mean_roc_averages_seed_curves():
    rng = np.random.default_rng(3)
    curves = []
    for n in (200, 300):  # seeds of different sizes
        mask = np.zeros(n, dtype=bool)
        mask[: n // 10] = True
        curves.append((rng.normal(size=n) + 1.5 * mask, mask))
    curve = mean_roc(curves + [(np.arange(4.0), np.zeros(4, dtype=bool))], grid=51)
    assert curve["n"] == 2 and curve["auroc"] == pytest.approx([roc_auc_score(m, s) for s, m in curves])
    per_seed = []
    for scores, mask in curves:
        fpr, tpr, _ = roc_curve(mask, scores)
        per_seed.append([tpr[fpr <= g + 1e-12].max() for g in curve["fpr"]])
    np.testing.assert_allclose(curve["tpr"], np.mean(per_seed, axis=0))
    np.testing.assert_allclose(curve["tpr_std"], np.std(per_seed, axis=0, ddof=1))
    assert curve["tpr"][-1] == 1.0 and np.all(np.diff(curve["tpr"]) >= 0)
    assert mean_roc([])["n"] == 0


def test_mean_roc_figure_has_a_band_per_multi_seed_defense(tmp_path, drawn):
    mask = np.r_[np.ones(10, dtype=bool), np.zeros(90, dtype=bool)]
    rng = np.random.default_rng(0)
    curves = {
        "spectral": [(rng.normal(size=100) + 2 * mask, mask) for _ in range(3)],
        "ac": [(rng.normal(size=100) + mask, mask)],
    }
    _png(plot_mean_roc(curves, tmp_path / "roc.png"))
    ax = drawn[-1].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("spectral: AUROC") and "(n=3)" in legend[0] and "(n=1)" in legend[1]
    assert len(ax.collections) == 1  # the band: one seed has no spread to draw


def test_heatmap_annotates_mean_and_std(tmp_path, drawn):
    grid = {
        ("spectral", "badmatch"): (0.91, 0.02),
        ("spectral", "clean"): (float("nan"), float("nan")),
        ("ac", "badmatch"): (0.5, float("nan")),
    }
    _png(plot_heatmap(grid, tmp_path / "heat.png", title="AUROC"))
    ax = drawn[-1].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0.50", "0.91\n± 0.02"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["badmatch"]  # the all-NaN column is dropped


def test_tradeoff_draws_paths_of_two_or_more_models(tmp_path, drawn):
    steps = [
        {
            "setting": "badmatch/patch 1%",
            "defense": "fine_pruning",
            "seed": 0,
            "step": i,
            "ca": 0.8 - 0.1 * i,
            "asr": 0.9 - 0.3 * i,
        }
        for i in range(3)
    ]
    steps.append({"setting": "badmatch/patch 1%", "defense": "cleanclip", "seed": 0, "step": 0, "ca": 0.8, "asr": 0.9})
    _png(plot_tradeoff(steps, tmp_path / "trade.png"))
    ax = drawn[-1].axes[0]
    path = next(line for line in ax.lines if len(line.get_xdata()) == 3)
    assert list(path.get_ydata()) == pytest.approx([0.9, 0.6, 0.3])
    assert "cleanclip" not in [t.get_text() for t in drawn[-1].axes[-1].get_legend().get_texts()]
    _skipped(tmp_path, "one.png", "more than one model", plot_tradeoff, steps[-1:])


def test_baddist_separation_one_dot_per_seed(tmp_path, drawn):
    rows = [
        {
            "attack": "baddist",
            "trigger": "patch",
            "seed": s,
            "heldout_cos_clean": 0.98,
            "heldout_cos_trigger": -0.9 + 0.05 * s,
        }
        for s in range(3)
    ]
    rows.append({"attack": "clean", "seed": 0, "ca": 0.8})
    _png(plot_baddist_separation(rows, tmp_path / "sep.png"))
    ax = drawn[-1].axes[0]
    dots = [line for line in ax.lines if line.get_linestyle() == "None" and len(line.get_xdata()) == 3]
    np.testing.assert_allclose(sorted(list(d.get_xdata()) for d in dots), [[-0.9, -0.85, -0.8], [0.98] * 3])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["baddist/patch"]


def test_trigger_examples_show_each_trigger_and_its_change(tmp_path, drawn):
    _png(plot_trigger_examples(tmp_path / "triggers.png", image_size=64))
    titles = [ax.get_title() for ax in drawn[-1].axes]
    assert titles[:4] == ["clean", "patch", "fourier", "blended"]
    peaks = [float(t.rsplit(" ", 1)[1]) for t in titles[4:]]
    assert peaks[0] == 0.0 and all(p > 0 for p in peaks[1:])  # each trigger changes the image, clean does not
    assert not drawn[-1].axes[4].get_visible()


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
