"""SCAn's default is the authors' released algorithm: its J, J* and subgroups match the release on seeded features,
and artmed's former variant (every option selected) still gives exactly the values it gave before the change.

Golden values:
- ``golden/scan_released.json``: TDteach/Demon-in-the-Variant at commit 2da39427d6efd0488a4f4cfa8b769793511b0b70,
  ``pysrc/SCAn.py`` run with numpy 2.4 in float64: ``SCAn().build_global_model(clean, y_clean, 4)`` on the clean set
  of ``parity_inputs`` below, then ``np.random.seed(rng_seed)``, ``build_local_model(train, y_train, gb_model, 4)``
  and ``calc_final_score``; "J" is ``lc_model['sts'][:, 1]``, "J_star" the anomaly index, "infected" J* > e^2,
  "subgroup_1" the rows with ``subg >= 0.5`` per class. The one change to run it under numpy >= 2: ``calc_test``'s
  (1, 1) result was converted to a float before ``build_local_model`` stores it (numpy 2 refuses the array there).
- ``golden/scan_artmed_variant.json``: artmed's SCAn at main eb375ce (before the released default), ``SCAn(seed=7)``
  on ``planted(n_per_class=150, n_classes=4, poison_share=0.02, seed=5)`` ("planted") and ``poison_share=0.0,
  seed=6`` ("clean") from test_defenses_detection, J / J_null / J* / verdicts per group, flagged rows, score sum and
  EM steps.

Tolerances: artmed projects the float32 features in float32 products (relative error ~1e-7, measured 3.7e-7 on J);
J* = deviation / MAD amplifies it by J / MAD ~ 10 here, so J to 1e-5 relative and J* to 3e-4 absolute.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from artmed.defenses.base import EvaluationContext, LabelGroups
from artmed.defenses.scan import SCAn, anomaly_index
from test_defenses_detection import context, planted

GOLDEN = Path(__file__).parent / "golden"
ARTMED = {
    "identity": "posterior",
    "global_fit": "all_rows",
    "global_em": "artmed",
    "untangling": "pca_kmeans",
    "one_sided": True,
    "size_correction": True,
    "tol": 1e-4,
}


def parity_inputs(seed=0, d=64, n_train=100, n_clean=60, n_classes=4, poisoned_class=2, n_poison=8, shift=12.0):
    """Class means N(0, 2^2 I), within-class rows of rank-16 structure plus unit noise; `n_poison` training rows of
    `poisoned_class` shifted by `shift` along one random unit direction. Returns float32 train and clean features,
    their integer labels and the poisoned rows."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)) * 2.0
    bases = [np.linalg.qr(rng.normal(size=(d, 16)))[0] for _ in range(n_classes)]

    def draw(n, c):
        return means[c] + (rng.normal(size=(n, 16)) * np.linspace(2.0, 0.5, 16)) @ bases[c].T + rng.normal(size=(n, d))

    train = np.concatenate([draw(n_train, c) for c in range(n_classes)])
    clean = np.concatenate([draw(n_clean, c) for c in range(n_classes)])
    direction = rng.normal(size=d)
    poison = poisoned_class * n_train + rng.choice(n_train, n_poison, replace=False)
    train[poison] += shift * direction / np.linalg.norm(direction)
    return (
        train.astype(np.float32),
        np.repeat(np.arange(n_classes), n_train),
        clean.astype(np.float32),
        np.repeat(np.arange(n_classes), n_clean),
        np.sort(poison),
    )


def clean_context(train, y_train, clean, y_clean):
    return EvaluationContext(
        y_train=y_train, y_clean=y_clean, feature_cache={"image_pooled": train, "image_pooled@x_clean": clean}
    )


@pytest.mark.parametrize("case", ["planted", "clean"])
def test_default_matches_the_released_code(case):
    golden = json.load(open(GOLDEN / "scan_released.json"))[case]
    train, y_train, clean, y_clean, poison = parity_inputs(n_poison=8 if case == "planted" else 0)
    np.testing.assert_allclose(
        [train.astype(np.float64).sum(), clean.astype(np.float64).sum()], golden["input_sums"], rtol=1e-9
    )  # the seeded inputs are those the golden saw
    assert poison.tolist() == golden["poison"]
    result = SCAn(seed=golden["rng_seed"]).run(clean_context(train, y_train, clean, y_clean))
    stats = result.extra["group_statistics"]
    np.testing.assert_allclose([entry["J"] for entry in stats], golden["J"], rtol=1e-5)
    np.testing.assert_allclose([entry["J_star"] for entry in stats], golden["J_star"], atol=3e-4)
    assert [entry["infected"] for entry in stats] == golden["infected"]
    # every group "infected": the flags are each group's smaller subgroup, row for row the release's split
    every = SCAn(seed=golden["rng_seed"], threshold=1e-9).run(clean_context(train, y_train, clean, y_clean))
    for k, ones in enumerate(golden["subgroup_1"]):
        members = np.arange(k * 100, (k + 1) * 100)
        smaller = members[np.isin(members, np.asarray(ones) + k * 100, invert=len(ones) > 50)]
        np.testing.assert_array_equal(np.flatnonzero(every.flags[members]) + k * 100, smaller)


def test_released_identity_and_artmed_identity_differ_as_reported():
    """The release takes a class's identity as S_e (n S_mu + S_e)^-1 sum x, the posterior mean is S_mu (...)^-1 sum x:
    on the same split the released J is thousands (the class mean's squared S_e-norm), the posterior one a few."""
    train, y_train, clean, y_clean, _ = parity_inputs()
    released = SCAn(seed=11).run(clean_context(train, y_train, clean, y_clean))
    posterior = SCAn(seed=11, identity="posterior").run(clean_context(train, y_train, clean, y_clean))
    assert min(entry["J"] for entry in released.extra["group_statistics"]) > 1e4  # measured 17177
    assert max(entry["J"] for entry in posterior.extra["group_statistics"]) < 100  # measured 10.1 (the planted class)
    (infected,) = posterior.extra["infected_groups"]  # the posterior identity finds the planted class, J* 9.05
    assert infected == "2" and released.extra["infected_groups"] == []


@pytest.mark.parametrize(
    "case, kwargs", [("planted", {"poison_share": 0.02, "seed": 5}), ("clean", {"poison_share": 0.0, "seed": 6})]
)
def test_artmed_variant_is_unchanged(case, kwargs):
    golden = json.load(open(GOLDEN / "scan_artmed_variant.json"))[case]
    feats, y, _ = planted(n_per_class=150, n_classes=4, **kwargs)
    result = SCAn(seed=7, **ARTMED).run(context(feats, y))
    stats = result.extra["group_statistics"]
    for key in ("J", "J_null", "J_star"):
        np.testing.assert_allclose([entry[key] for entry in stats], golden[key], rtol=1e-9, atol=1e-12)
    assert [entry["infected"] for entry in stats] == golden["infected"]
    assert np.flatnonzero(result.flags).tolist() == golden["flags"]
    assert result.scores.sum() == pytest.approx(golden["score_sum"], rel=1e-9)
    assert result.extra["em_iterations"] == golden["em_iterations"]


def test_clean_fit_without_a_clean_set_names_the_option():
    feats, y, _ = planted(n_per_class=50, n_classes=3)
    with pytest.raises(ValueError, match="global_fit='all_rows'"):
        SCAn().run(context(feats, y))
    with pytest.raises(ValueError, match="y_clean"):
        SCAn().run(EvaluationContext(y_train=y, feature_cache={"image_pooled": feats, "image_pooled@x_clean": feats}))
    result = SCAn(global_fit="all_rows").run(context(feats, y))
    assert len(result.extra["group_statistics"]) == 3


def test_released_anomaly_index_is_two_sided():
    j = np.array([1.0, 2.0, 3.0, 4.0, -30.0])
    np.testing.assert_allclose(anomaly_index(j, "scan", one_sided=False), np.abs(j - 2.0) / 1.4826)
    assert anomaly_index(j, "scan", one_sided=False)[-1] > math.exp(2)  # a group far below is "infected" as released


@pytest.mark.parametrize("grouping, n_groups", [("finding", 2), ("label_vector", 4), ("none", 1)])
def test_clean_set_is_grouped_like_the_training_rows(grouping, n_groups):
    """The global model's groups on the defender's clean set follow the detector's ``grouping``: under "finding" a
    multi-label clean row joins its primary finding's group, as a training row does (it had its own group before)."""
    rng = np.random.default_rng(3)
    y = np.zeros((40, 14))
    y[:20, 0] = 1  # No Finding
    y[20:, 2] = 1  # Cardiomegaly
    y[15:20, 13] = 1  # + Support Devices: a label vector of its own, the "No Finding" finding
    y[35:40, 5] = 1  # + Lung Opacity
    feats = rng.normal(size=(40, 8)).astype(np.float32)
    context = EvaluationContext(
        y_train=y, y_clean=y, feature_cache={"image_pooled": feats, "image_pooled@x_clean": feats}
    )
    _, members = SCAn(grouping=grouping)._clean_set(context, torch.device("cpu"))
    assert len(members) == n_groups
    assert sorted(len(m) for m in members) == sorted(
        np.bincount(LabelGroups.split(context, 40, 1, "scan", grouping).ids).tolist()
    )
