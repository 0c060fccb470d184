"""Read-ahead image loading: worker processes change neither the batches, their order, nor any result."""

import numpy as np
import pytest
import torch

from artmed import MedCLIPEstimator
from artmed.attacks.poisoning import BadDist
from artmed.data.dataset import ArrayImageSet
from artmed.loader import image_batches
from tests.toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, TRIGGER, images


def test_workers_give_the_same_batches_in_order():
    x, _, _ = images(23, seed=0)
    batches = [np.array([5, 1, 7]), np.arange(10, 20), np.array([22])]
    serial = [b.numpy() for b in image_batches(x, batches, (1, SIZE, SIZE), torch.device("cpu"))]
    parallel = [b.numpy() for b in image_batches(x, batches, (1, SIZE, SIZE), torch.device("cpu"), num_workers=2)]
    assert [b.shape[0] for b in parallel] == [3, 10, 1]
    for expected, a, b in zip(batches, serial, parallel):
        np.testing.assert_array_equal(a, x[expected])
        np.testing.assert_array_equal(b, x[expected])


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_worker_counts_refused(bad):
    with pytest.raises(ValueError, match="num_workers"):
        MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, num_workers=bad)


def test_estimator_with_workers_matches_serial_inference_and_training():
    x, y, _ = images(24, seed=1)
    image_set = ArrayImageSet(x, y)
    results = []
    for workers in (0, 2):
        est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=3, num_workers=workers, batch_size=7)
        assert est.clone().num_workers == workers
        features = est.get_activations(image_set, "image_pooled")
        history = est.fit(image_set, y, TEXTS, TEXT_LABELS, steps=3, batch_size=8, lr=1e-3, seed=0, verbose=False)
        results.append((features, history["loss"], est.predict(x)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    np.testing.assert_array_equal(results[0][2], results[1][2])


def test_bad_dist_with_workers_matches_serial():
    x, _, _ = images(12, seed=2)
    histories = []
    for workers in (0, 2):
        estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=4, num_workers=workers)
        attack = BadDist(estimator, TRIGGER, lr=0.01, steps=3, batch_size=4, seed=1, verbose=False)
        attack.poison_estimator(x)
        histories.append(attack.history_)
    assert histories[0] == histories[1]
    assert len(histories[0]["loss"]) == 3
