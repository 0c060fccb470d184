"""Fine-pruning against the authors' release (kangliucn/Fine-pruning-defense, commit 0976c1d, Caffe).

``tests/golden/fine_pruning_release.npz`` was made by a line-by-line numpy port (float64) of the release's
``face/conv_output_prune.py`` on a tiny fixed layer: inputs ``x`` (6, 3, 10, 10) ~ U(0, 1), ``conv_weight``
(10, 3, 3, 3) and ``conv_bias`` (10,) ~ N(0, 0.5), ``projection`` (5, 10) ~ N(0, 1), all drawn in that order from
``np.random.default_rng(2018)`` and stored. The port runs conv3 (stride 1, no pad) -> ReLU -> MAX pool 2x2/2 (pool3),
``activation = np.mean(pool3, axis=(0, 2, 3))``, ``seq_sort = np.argsort(activation)``, zeroes the filter and bias of
``seq_sort[:8]`` (8 of 10: the release's 48 of 60 share), and stores the pruned network's global-average-pooled pool3
times ``projection`` as ``embedding_pruned``. The activations have one dead channel and no ties (smallest gap 3.2e-3),
so the ranking does not depend on the sort; everything here is float64, hence the 1e-12 tolerance.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from artmed.defenses import FinePruning
from artmed.defenses import fine_pruning as fp

GOLDEN = np.load(Path(__file__).parent / "golden" / "fine_pruning_release.npz")


def pool3(weight: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """The golden layer in torch: conv -> ReLU -> 2x2 max pool, (6, 10, 4, 4) float64."""
    x = torch.from_numpy(GOLDEN["x"])
    return F.max_pool2d(F.relu(F.conv2d(x, torch.from_numpy(weight), torch.from_numpy(bias))), 2)


def test_ranking_and_pruned_set_match_the_release():
    acts = pool3(GOLDEN["conv_weight"], GOLDEN["conv_bias"]).numpy()
    ranking = fp.rank_channels([acts[:4], acts[4:]], (0, 2, 3), "mean")
    assert np.array_equal(ranking, GOLDEN["seq_sort"])
    n = FinePruning()._prune_counts(ranking.shape[0])[-1]
    assert n == 8 and set(ranking[:n]) == set(GOLDEN["pruned"])
    assert FinePruning()._prune_counts(60)[-1] == 48  # the release's face model: 48 of conv3's 60 channels


def test_zeroed_projection_columns_equal_the_release_zeroed_filters():
    """Zeroing the pruned channels' projection columns gives the embedding of the release's network with the
    filters and biases of those channels zeroed."""
    acts = pool3(GOLDEN["conv_weight"], GOLDEN["conv_bias"])
    ranking = fp.rank_channels([acts.numpy()], (0, 2, 3), "mean")
    projection = torch.nn.Linear(10, 5, bias=False).double()
    with torch.no_grad():
        projection.weight.copy_(torch.from_numpy(GOLDEN["projection"]))
        projection.weight[:, ranking[: fp.pruned_count(0.8, 10)]] = 0.0
        embedding = projection(acts.mean(dim=(2, 3))).numpy()
    np.testing.assert_allclose(embedding, GOLDEN["embedding_pruned"], rtol=0, atol=1e-12)
    unpruned = acts.mean(dim=(2, 3)).numpy() @ GOLDEN["projection"].T
    assert np.abs(unpruned - GOLDEN["embedding_pruned"]).max() > 0.1  # pruning did change the embedding
