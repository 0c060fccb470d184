"""SPECTRE and SCAn on synthetic features: a planted cluster is found, clean data stays quiet, SPECTRE's robust
whitening catches what spectral signatures miss, bad parameters are refused, and both run through the harness."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from artmed.attacks.pipeline import AttackSpec
from artmed.defenses import SpectralSignatures, registry
from artmed.defenses.scan import SCAn, anomaly_index, fit_decomposition
from artmed.defenses.spectre import (
    SPECTRE,
    fourth_moment_direction,
    inverse_sqrt,
    que_scores,
    top_fourth_moment_pair,
)
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from test_defenses_detection import context, planted, rates

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")


def masked_by_a_wide_direction(n=1000, d=64, share=0.01, shift=6.0, wide=6.0, seed=0):
    """One label group whose clean features spread `wide` (std) along one direction, 2..1 along 19 more and 1 along
    the rest; `share` of the rows are shifted by `shift` along a unit-variance direction. The wide clean direction
    holds far more variance than the poison adds (wide^2 >> share·shift^2), so the top singular vector misses it."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.ones(d)
    scales[0] = wide
    scales[1:20] = np.linspace(2.0, 1.0, 19)
    feats = (rng.normal(size=(n, d)) * scales) @ basis.T
    poison = rng.choice(n, int(round(share * n)), replace=False)
    feats[poison] += shift * basis[:, 40]
    y = np.zeros((n, 14), np.float32)
    y[:, 0] = 1.0
    mask = np.zeros(n, bool)
    mask[poison] = True
    return feats.astype(np.float32), y, mask


# ------------------------------------------------------------------ SPECTRE
def test_spectre_flags_planted_outliers():
    feats, y, mask = planted(poison_share=0.02, d=32)  # 32-d: k up to 32 keeps the released filter quick
    result = SPECTRE(eps=0.05).run(context(feats, y))
    tpr, fpr, _ = rates(result.flags, mask)
    assert tpr == 1.0 and fpr <= 0.06  # measured 1.0 and 0.056: 1.5·eps of each group is flagged
    assert roc_auc_score(mask, result.scores) > 0.99  # measured 1.0
    assert result.flags.sum() == 3 * 30  # round(1.5·0.05·400) per group
    for group in result.extra["per_group"]:
        assert set(group["k_selection"]) == set(group["k_filtered"]) == {1, 2, 4, 7, 9, 13, 17, 21, 26, 32}
        assert group["k"] in group["k_selection"]
        assert all(0 <= dropped <= 40 for dropped in group["k_filtered"].values())  # at most round(2·eps·400)
    # the tail test stops the filter once the kept rows look Gaussian: in the poisoned group after 1 row at k = 17
    assert sorted(group["filtered"] for group in result.extra["per_group"]) == [1, 40, 40]
    capped = SPECTRE(eps=0.05, robust_filter="capped").run(context(feats, y))
    assert all(group["filtered"] == 40 for group in capped.extra["per_group"])  # always its full cap


def test_spectre_on_clean_features_flags_its_share_at_random():
    feats, y, _ = planted(poison_share=0.0, d=32)
    result = SPECTRE(eps=0.05).run(context(feats, y))
    assert result.flags.sum() == 3 * 30  # round(1.5·0.05·400) per group, nothing more
    assert np.median(result.scores) == pytest.approx(1.0, abs=0.2)  # whitened: clean rows score about 1 (0.84)
    decoy = np.random.default_rng(1).random(len(y)) < 0.05
    assert abs(roc_auc_score(decoy, result.scores) - 0.5) < 0.1  # measured 0.54


def test_spectre_catches_what_spectral_signatures_miss():
    feats, y, mask = masked_by_a_wide_direction()
    ss = SpectralSignatures(eps=0.02).run(context(feats, y))
    assert rates(ss.flags, mask)[0] == 0.0 and roc_auc_score(mask, ss.scores) < 0.6  # measured 0.0 and 0.47
    spectre = SPECTRE(eps=0.02, max_components=32).run(context(feats, y))  # k <= 32 keeps the filter quick
    assert rates(spectre.flags, mask)[0] == 1.0 and roc_auc_score(mask, spectre.scores) > 0.99  # measured 1, 1.0
    unfiltered = SPECTRE(eps=0.02, filter_share=0.0).run(context(feats, y))  # plain whitening: Mahalanobis norm
    assert rates(unfiltered.flags, mask)[0] <= 0.8  # measured 0.7: the robust covariance is what finds them


def test_spectre_fixed_k_and_one_dimension():
    feats, y, mask = planted(poison_share=0.02)
    fixed = SPECTRE(eps=0.05, k=16).run(context(feats, y))
    assert all(group["k"] == 16 and group["k_selection"] == {} for group in fixed.extra["per_group"])
    assert rates(fixed.flags, mask)[0] == 1.0
    one = SPECTRE(eps=0.05, k=1).run(context(feats, y))  # the spectral signature, scaled by its variance
    np.testing.assert_array_equal(one.flags, SpectralSignatures(eps=0.05).run(context(feats, y)).flags)


def test_que_score_and_fourth_moment_direction():
    rng = np.random.default_rng(0)
    white = torch.from_numpy(rng.normal(size=(4000, 3)))
    sigma = torch.diag(torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64))
    q = torch.diag(torch.tensor([1.0, math.exp(-4.0), math.exp(-4.0)], dtype=torch.float64))  # exp(4 (S - I) / 2)
    expected = torch.einsum("ni,ij,nj->n", white, q, white) / q.trace()
    torch.testing.assert_close(que_scores(white, sigma, 4.0), expected)
    torch.testing.assert_close(que_scores(white, torch.eye(3, dtype=torch.float64), 4.0), white.square().mean(1))
    rows = rng.normal(size=(4000, 4))
    rows[:40, 2] += 12.0  # a 1 % cluster: the fourth moment peaks along axis 2
    rows = (rows - rows.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(rows.T, bias=True))).T
    v = fourth_moment_direction(torch.from_numpy(rows).float(), torch.eye(4) / 2.0)
    assert v.norm() == pytest.approx(1.0, abs=1e-5) and torch.allclose(v, v.T)
    assert abs(float(v[2, 2])) > 0.95


@pytest.mark.parametrize("case", ["planted", "repeated", "indefinite", "few_rows"])
def test_top_fourth_moment_pair_is_the_operators_top_eigenpair(case):
    """The (m + 1)-dimensional solve gives the top eigenpair a dense eigh of T (k^2 x k^2) gives, to rounding: with more
    rows than symmetric k x k dimensions (a rank-deficient Gram), with repeated rows, with a column that is a
    combination of two others (whitening raises its zero variance, so T is indefinite) and with fewer rows than
    dimensions. V is symmetric, of unit Frobenius norm, signed so that sum(V) >= 0."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(60, 5))
    if case == "planted":
        rows[:4, 1] += 6.0
    elif case == "repeated":
        rows = np.tile(rng.normal(size=(20, 5)) * [3.0, 2.0, 1.0, 1.0, 1.0], (2, 1))
    elif case == "indefinite":
        rows[:, 4] = rows[:, 0] - rows[:, 1]
    else:
        rows = rng.standard_t(4, size=(12, 5))
    rows = torch.from_numpy(rows)
    m, k = rows.shape
    white = rows @ inverse_sqrt(rows.T @ rows / m)
    columns = torch.einsum("ni,nj->nij", white, white).reshape(m, k * k)
    identity = torch.eye(k, dtype=torch.float64).reshape(-1)
    values, vectors = torch.linalg.eigh(columns.T @ columns / m - torch.outer(identity, identity))
    assert values[-1] - values[-2] > 0.5  # a simple top eigenvalue (measured gaps 0.8-3.4)
    assert (values[0] < -1.0) == (case == "indefinite")  # measured -2.1; else >= 0 to rounding
    expected = vectors[:, -1].reshape(k, k)
    value, v = top_fourth_moment_pair(white)
    assert value == pytest.approx(float(values[-1]), rel=1e-12)  # measured 6e-16
    torch.testing.assert_close(v, expected if expected.sum() >= 0 else -expected, rtol=0, atol=1e-12)  # 1e-15
    assert float(v.sum()) >= 0 and v.norm() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"eps": 0.0}, "eps"),
        ({"removal_share": 0}, "removal_share"),
        ({"filter_share": -1.0}, "filter_share"),
        ({"eps": 0.3, "filter_share": 2.0}, "filter_share"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"k": 0}, "k"),
        ({"k": 101}, "k"),
        ({"k": 2.5}, "k"),
        ({"max_components": 0}, "max_components"),
        ({"filter_rounds": 0}, "filter_rounds"),
        ({"min_group_size": 3}, "min_group_size"),
        ({"layer": ""}, "layer"),
        ({"device": "bogus"}, "device"),
        ({"k_steps": 0}, "k_steps"),
        ({"robust_filter": "dkk"}, "robust_filter"),
        ({"whitening": True}, "whitening"),
        ({"rounding": "ceil"}, "rounding"),
    ],
)
def test_spectre_bad_params_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        SPECTRE(**params)


# ------------------------------------------------------------------ SCAn
ARTMED = {
    "identity": "posterior",
    "global_fit": "all_rows",
    "global_em": "artmed",
    "untangling": "pca_kmeans",
    "one_sided": True,
    "size_correction": True,
    "tol": 1e-4,
}
"""artmed's SCAn before it defaulted to the release (tests/test_scan_parity.py checks the released default)."""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_finds_the_infected_group(seed):
    feats, y, mask = planted(n_classes=5, poison_share=0.02, seed=seed)  # 40 poisons: 10 % of their group
    result = SCAn(seed=seed, **ARTMED).run(context(feats, y))
    tpr, fpr, _ = rates(result.flags, mask)
    assert tpr == 1.0 and fpr == 0.0  # measured 1.0 and 0.0
    assert roc_auc_score(mask, result.scores) > 0.99  # measured 1.0
    (infected,) = result.extra["infected_groups"]
    stats = {entry["group"]: entry for entry in result.extra["group_statistics"]}
    assert stats[infected]["J_star"] > 10.0  # measured 24, 182, 30; the threshold is e^2
    assert max(entry["J_star"] for name, entry in stats.items() if name != infected) < 3.0  # measured <= 1.7
    assert stats[infected]["flagged"] == stats[infected]["smaller_subgroup"] == mask.sum()


@pytest.mark.parametrize("seed", range(5))
def test_scan_on_clean_features_finds_no_infected_group(seed):
    feats, y, _ = planted(n_classes=5, poison_share=0.0, seed=seed)
    result = SCAn(seed=seed, **ARTMED).run(context(feats, y))
    assert result.extra["infected_groups"] == [] and not result.flags.any()
    assert max(entry["J_star"] for entry in result.extra["group_statistics"]) < math.exp(2)  # measured <= 4.1
    assert result.extra["em_converged"]


def test_scan_size_correction_keeps_a_small_clean_group_clean():
    """J grows as a group shrinks (the split overfits, the identity is shrunk): uncorrected, a clean group of 30 rows
    among groups of 400 is called infected; with the correction (artmed's option) no group is."""
    rng = np.random.default_rng(0)
    sizes, d = [400] * 6 + [30], 64
    feats = np.concatenate([rng.normal(size=d) * 3 + rng.normal(size=(n, d)) * np.linspace(3, 1, d) for n in sizes])
    y = np.zeros((sum(sizes), 14), np.float32)
    y[np.arange(sum(sizes)), np.repeat(np.arange(len(sizes)), sizes)] = 1.0
    paper = SCAn(**{**ARTMED, "size_correction": False}).run(context(feats.astype(np.float32), y))
    small = next(entry for entry in paper.extra["group_statistics"] if entry["size"] == 30)
    assert paper.extra["infected_groups"] == [small["group"]] and small["J_star"] > 20  # measured 77.6
    corrected = SCAn(**ARTMED).run(context(feats.astype(np.float32), y))
    assert corrected.extra["infected_groups"] == [] and not corrected.flags.any()
    assert all(entry["J_null"] > 0 for entry in corrected.extra["group_statistics"])


def test_scan_global_model_recovers_the_decomposition():
    """Rows mu_k + e with known S_mu, S_e: the EM-like fit (from the sufficient statistics) recovers both."""
    rng = np.random.default_rng(0)
    d, n_groups, per_group = 3, 300, 40
    s_mu, s_e = np.diag([4.0, 1.0, 0.25]), np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.0], [0.0, 0.0, 2.0]])
    identities = rng.multivariate_normal(np.zeros(d), s_mu, n_groups)
    rows = np.repeat(identities, per_group, 0) + rng.multivariate_normal(np.zeros(d), s_e, n_groups * per_group)
    rows -= rows.mean(0)
    sums = torch.from_numpy(rows.reshape(n_groups, per_group, d).sum(1))
    model = fit_decomposition(
        torch.from_numpy(rows.T @ rows), sums, torch.full((n_groups,), float(per_group), dtype=torch.float64), 100, 1e-6
    )
    w = model.basis.numpy()
    inverse = np.linalg.inv(w)
    fitted_e, fitted_mu = inverse.T @ inverse, inverse.T @ np.diag(model.identity_variances.numpy()) @ inverse
    np.testing.assert_allclose(fitted_e, s_e, atol=0.05)
    np.testing.assert_allclose(fitted_mu, s_mu, atol=0.6)  # 300 identities: a ~10 % sampling error
    assert model.converged


def test_anomaly_index_is_one_sided_and_mad_scaled():
    j = np.array([1.0, 2.0, 3.0, 4.0, 30.0])
    np.testing.assert_allclose(anomaly_index(j, "scan"), (j - 3.0) / 1.4826)
    with pytest.warns(UserWarning, match="at least 3"):
        np.testing.assert_array_equal(anomaly_index(np.array([5.0]), "scan"), [0.0])


@pytest.mark.parametrize(
    "params, name",
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": float("inf")}, "threshold"),
        ({"max_iter": 0}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"n_components": 0}, "n_components"),
        ({"tol": 0.0}, "tol"),
        ({"split_components": 0}, "split_components"),
        ({"size_correction": 1}, "size_correction"),
        ({"fit_rows": 10}, "fit_rows"),
        ({"min_group_size": 2}, "min_group_size"),
        ({"layer": None}, "layer"),
        ({"device": "bogus"}, "device"),
        ({"identity": "artmed"}, "identity"),
        ({"global_fit": "clean_set"}, "global_fit"),
        ({"global_em": True}, "global_em"),
        ({"untangling": "kmeans"}, "untangling"),
        ({"one_sided": "yes"}, "one_sided"),
    ],
)
def test_scan_bad_params_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        SCAn(**params)


def test_scan_reduced_dimensions_and_seeded():
    feats, y, mask = planted(n_classes=5, poison_share=0.02, seed=2)
    a = SCAn(n_components=16, seed=3, **ARTMED).run(context(feats, y))
    b = SCAn(n_components=16, seed=3, **ARTMED).run(context(feats, y))
    assert a.extra["dims"] == 16 and rates(a.flags, mask)[0] == 1.0
    np.testing.assert_array_equal(a.scores, b.scores)


# ------------------------------------------------------------------ both, registered and through the harness
def test_registered_under_their_names():
    for name, cls in (("spectre", SPECTRE), ("scan", SCAn)):
        assert registry.get(name) is cls and cls.name == name and cls.kind == "detection"
        defense = cls(seed=4) if cls is SCAn else cls(k=9)
        assert type(defense)(**defense.get_params()).get_params() == defense.get_params()


def test_harness_runs_both(tmp_path):
    config = StudyConfig(
        seed=0,
        output_dir=str(tmp_path / "study"),
        data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=32),
        pretrain=TrainConfig(steps=3, batch_size=16),
        train=TrainConfig(steps=3, batch_size=16),
        attacks=[AttackSpec("badmatch", percent_poison=0.05)],
        defenses=[DefenseSpec("spectre", {"min_group_size": 4}), DefenseSpec("scan", {"min_group_size": 4})],
    )
    with pytest.warns(UserWarning):  # the phantom labels leave small label groups (never flagged)
        result = Harness(config, verbose=False).run()
    rows = {row["defense"]: row for row in result.defenses}
    assert set(rows) == {"spectre", "scan"}
    for row in rows.values():
        assert row["status"] == "ok", row.get("error")
        assert row["kind"] == "detection"
        assert all(0.0 <= row[key] <= 1.0 for key in ("auroc", "tpr", "fpr"))
