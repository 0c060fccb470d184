"""Streamed per-group PCA: the one-pass shifted float32 scatter matches a float64 SVD, whatever the chunking,
row order, offset of the mean or storage dtype; label rows group as ``np.unique(axis=0)`` would."""

import numpy as np
import pytest
import torch

from artmed.defenses import group_labels
from artmed.defenses.decomposition import RowStream, fast_ica, group_pca, pca


def reference(x, k):
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T, s[:k] ** 2


def spread_features(n, d, offset, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.5, d)
    return (offset + rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0]).astype(np.float32)


@pytest.mark.parametrize("n, chunk_rows", [(900, 37), (900, 10_000), (20, 7)])
def test_group_pca_matches_float64_svd(n, chunk_rows):
    feats = spread_features(n, 32, offset=1e3)
    rows = np.random.default_rng(1).permutation(n)[: n - 3]
    x = feats[rows].astype(np.float64)
    mean, directions, evals = reference(x, 3)
    axes = group_pca(RowStream(feats, torch.device("cpu"), chunk_rows), rows, 3)
    np.testing.assert_allclose(axes.mean.numpy(), mean, rtol=1e-9, atol=1e-4)
    cosines = np.abs((axes.directions.numpy() * directions).sum(0))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)
    np.testing.assert_allclose(axes.eigenvalues.numpy(), evals, rtol=1e-4)
    signs = np.sign((axes.directions.numpy() * directions).sum(0))
    centered = axes.project(RowStream(feats, torch.device("cpu"), chunk_rows), rows).numpy()
    np.testing.assert_allclose(centered, (x - mean) @ directions * signs, rtol=1e-4, atol=1e-2)
    raw = axes.project(RowStream(feats, torch.device("cpu"), chunk_rows), rows, centered=False).numpy()
    np.testing.assert_allclose(raw, x @ directions * signs, rtol=1e-5, atol=1e-2)


def test_stream_reads_other_dtypes_and_layouts():
    feats = spread_features(300, 16, offset=5.0)
    rows = np.arange(0, 300, 2)
    expected = pca(RowStream(feats, torch.device("cpu")), rows, 2).abs().numpy()
    for variant in (feats.astype(np.float64), np.asfortranarray(feats), feats.astype(np.float16)):
        got = pca(RowStream(variant, torch.device("cpu"), chunk_rows=64), rows, 2).abs().numpy()
        tol = 5e-2 if variant.dtype == np.float16 else 1e-4
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_stream_refuses_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        RowStream(np.zeros(5, np.float32), torch.device("cpu"))


def test_fast_ica_unmixes_two_sources():
    rng = np.random.default_rng(0)
    sources = np.stack([np.sign(rng.normal(size=4000)), rng.uniform(-1, 1, 4000)], 1)
    mixed = (sources @ np.array([[2.0, 1.0], [1.0, 1.5]]) + 7.0).astype(np.float32)
    z, converged = fast_ica(RowStream(mixed, torch.device("cpu")), np.arange(4000), 2, torch.Generator().manual_seed(0))
    corr = np.abs(np.corrcoef(z.numpy().T, sources.T)[:2, 2:])
    assert converged and corr.max(1).min() > 0.99


def test_group_labels_equals_unique_rows():
    y = np.random.default_rng(0).choice([-1.0, 0.0, 1.0], size=(5000, 14), p=[0.1, 0.7, 0.2]).astype(np.float32)
    rows, inverse = np.unique(y, axis=0, return_inverse=True)
    ids, names = group_labels(y)
    np.testing.assert_array_equal(ids, inverse.reshape(-1))
    assert len(names) == rows.shape[0]


def test_fast_ica_sources_stay_decorrelated_on_mostly_gaussian_data():
    """Gaussian groups never converge; the unmixing must still stay orthogonal (it once blew up in float32)."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.3 + rng.normal(size=(400, 64))
    feats = feats.astype(np.float32)
    feats[:12] += 4.0
    stream = RowStream(feats, torch.device("cpu"))
    for seed in range(12):
        z, _ = fast_ica(stream, np.arange(400), 10, torch.Generator().manual_seed(seed), max_iter=100)
        np.testing.assert_allclose(np.cov(z.numpy().T), np.eye(10), atol=1e-3)


def test_resident_copy_reads_the_same_rows():
    """The GPU path (one device-resident float32 copy, index_select on it), exercised on the CPU."""
    feats = spread_features(700, 24, offset=3.0).astype(np.float16)
    rows = np.random.default_rng(2).permutation(700)[:500]
    shift = torch.full((24,), 0.5)
    for resident in (False, True):
        stream = RowStream(feats, torch.device("cpu"), chunk_rows=64, resident=resident)
        got = torch.cat([chunk.clone() for chunk in stream.chunks(rows, shift)]).numpy()
        np.testing.assert_array_equal(got, feats[rows].astype(np.float32) - 0.5)
    axes = [group_pca(RowStream(feats, torch.device("cpu"), 64, resident), rows, 2) for resident in (False, True)]
    np.testing.assert_allclose(axes[0].eigenvalues.numpy(), axes[1].eigenvalues.numpy(), rtol=1e-12)
