"""SPECTRE against the authors' released algorithm and against artmed's earlier variant.

Golden values in ``tests/golden/spectre_released.json`` come from a line-by-line numpy port (run outside the repo,
never committed) of SewoongLab/spectre-defense at commit ccf594a: ``util.jl`` (``pca``, ``k_lowest_ind``),
``dkk17.jl`` (``cov_Tail``, ``Q``, ``cov_estimation_filter``, ``cov_estimation_iterate``) and ``quantum_filters.jl``
(``rcov_quantum_filter``, ``rcov_auto_quantum_filter`` with its defaults alpha = 4, tau = 0.1, limit1 = 2,
limit2 = 1.5), in float64 on the float32 rows of `released_case`, with ``eps`` the number of planted rows as in
``run_filters.jl``. Julia is not available here; the port differs from it in two places only: the SVD is numpy's
full one (the Julia takes ``svds``; the projection is the same up to the signs of its axes, which no later step
sees), and KrylovKit's ``eigsolve(T, ones(d^2))`` is SciPy's ARPACK ``eigsh(which="LA", v0=ones, tol=1e-11)``: the same
start, both converged to the top eigenpair (T is positive semi-definite, so largest magnitude is largest). Nothing in
the released code is random once the rows are given (``rpca``'s ``randperm`` is never called by the SPECTRE path).

``tests/golden/spectre_legacy.npz`` holds artmed's SPECTRE before the released algorithm became the default (main
eb375ce), run on ``planted(poison_share=0.02)`` (eps 0.05) and ``planted(poison_share=0.03, seed=1)`` (eps 0.1,
k = 16) of test_defenses_detection: all scores, flags and per-group k and filtered counts.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from artmed.defenses.spectre import SPECTRE
from test_defenses_detection import context, planted

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")

GOLDEN = Path(__file__).parent / "golden"
LEGACY = {"robust_filter": "capped", "max_components": 64, "k_steps": 8, "whitening": "artmed", "rounding": "floor"}


def released_case(n, d, n_poison, shift, direction_rank, wide, seed):
    """(n, d) float32 rows: Gaussian with std 3 along the first `wide` vectors of a seeded random orthonormal basis
    (QR of a normal matrix) and 1 along the rest; the last `n_poison` rows shifted by `shift` along basis vector
    `direction_rank` (a seeded random unit vector when None)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = (rng.normal(size=(n, d)) * np.where(np.arange(d) < wide, 3.0, 1.0)) @ basis.T
    if direction_rank is None:
        direction = rng.normal(size=d)
        direction /= np.linalg.norm(direction)
    else:
        direction = basis[:, direction_rank]
    x[n - n_poison :] += shift * direction
    return x.astype(np.float32)


def one_group(x):
    y = np.zeros((x.shape[0], 14), np.float32)
    y[:, 0] = 1.0
    return context(x, y)


def run_golden(name, **params):
    golden = json.loads((GOLDEN / "spectre_released.json").read_text())[name]
    x = released_case(**golden["inputs"])
    assert np.abs(x.astype(np.float64)).mean() == pytest.approx(golden["input_abs_mean"], rel=1e-6)  # same rows
    inputs = golden["inputs"]
    result = SPECTRE(eps=inputs["n_poison"] / inputs["n"], **params).run(one_group(x))
    return golden, result, result.extra["per_group"][0]


def test_automatic_k_matches_the_release_and_finds_a_cluster_only_high_k_sees():
    """The planted 5 % lies along a direction outside the top 64 principal ones: the released grid (to 100) chooses
    k = 81 and flags all 20 planted rows, as the port of the authors' code does, row for row; every candidate's
    filter drops as many rows as the release's (its Gaussian test stops it early for k <= 16) and its selection
    value agrees to 1e-5 (artmed's PCA streams float32 rows). artmed's earlier grid stops at 64 and misses half."""
    golden, result, group = run_golden("high_k")
    assert group["k"] == golden["k"] == 81
    assert {str(k): v for k, v in group["k_selection"].items()} == pytest.approx(golden["selection"], rel=1e-5)
    assert {str(k): 400 - v for k, v in group["k_filtered"].items()} == golden["kept"]
    np.testing.assert_array_equal(np.flatnonzero(result.flags), golden["flagged"])
    np.testing.assert_allclose(result.scores, golden["scores"], rtol=1e-4)  # measured 2e-6
    assert result.flags[-20:].all()
    legacy = SPECTRE(eps=0.05, **LEGACY).run(one_group(released_case(**golden["inputs"])))
    assert legacy.extra["per_group"][0]["k"] <= 64 and legacy.flags[-20:].sum() <= 15  # measured 10 of 20


def test_fixed_k_matches_the_release():
    """k = 16 on another planted 5 %: the filter runs to its cap, round(2·eps·n) = 30 rows, and the QUE scores and
    the round(1.5·eps·n) = 22 flags are the release's."""
    golden, result, group = run_golden("fixed_k16", k=16)
    assert group["k"] == 16 and group["filtered"] == 300 - golden["kept"]["16"] == 30
    np.testing.assert_array_equal(np.flatnonzero(result.flags), golden["flagged"])
    np.testing.assert_allclose(result.scores, golden["scores"], rtol=1e-4)


def test_artmed_variant_is_unchanged():
    """All four earlier choices together reproduce artmed's earlier SPECTRE (scores to float rounding, flags, k and
    filtered counts exactly)."""
    legacy = np.load(GOLDEN / "spectre_legacy.npz")
    for name, params, data in (
        ("planted", {}, {"poison_share": 0.02}),
        ("k16", {"k": 16, "eps": 0.1}, {"poison_share": 0.03, "seed": 1}),
    ):
        feats, y, _ = planted(**data)
        result = SPECTRE(**LEGACY, **params).run(context(feats, y))
        np.testing.assert_allclose(result.scores, legacy[f"{name}_scores"], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(result.flags, legacy[f"{name}_flags"])
        assert sorted(g["k"] for g in result.extra["per_group"]) == sorted(legacy[f"{name}_k"].tolist())
        assert sorted(g["filtered"] for g in result.extra["per_group"]) == sorted(legacy[f"{name}_filtered"].tolist())


def test_released_counts_round_to_nearest():
    """The release flags round(1.5·eps·n) rows and caps its filter at round(2·eps·n) (Julia's round: ties to even);
    ``rounding="floor"`` keeps artmed's floor."""
    assert SPECTRE()._count(100, 0.075) == 8 and SPECTRE()._count(300, 0.075) == 22  # 7.5 -> 8, 22.5 -> 22
    assert SPECTRE(rounding="floor")._count(100, 0.075) == 7
    assert SPECTRE()._count(410, 0.075) == 31 and SPECTRE(rounding="floor")._count(410, 0.075) == 30
