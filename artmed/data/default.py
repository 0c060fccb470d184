"""The built-in default dataset: phantom training images, generated report sentences and the three zero-shot tasks.

Everything is generated from one seed in seconds; nothing is downloaded or shipped.
"""

from __future__ import annotations

from artmed.data.dataset import ArrayImageSet, MedDataset
from artmed.data.phantom import PhantomGenerator, sample_labels
from artmed.data.reports import make_text_pool
from artmed.data.tasks import TASK_NAMES, make_task, stream_seed


def make_default_dataset(
    n_train: int = 2000, n_test: int = 200, image_size: int = 64, seed: int = 0, n_texts: int | None = None
) -> MedDataset:
    """Phantom training set (`n_train` images with realistic labels), text pool (all generated sentences, or
    `n_texts`), and the tasks "rsna_like", "covid_like", "chexpert5" with `n_test` held-out images each."""
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    train_seed = stream_seed(seed, "train")
    labels = sample_labels(n_train, train_seed)
    images = PhantomGenerator(image_size, train_seed).generate(labels)
    texts = make_text_pool(n_texts, stream_seed(seed, "texts"))
    tasks = {name: make_task(name, n_test, image_size, seed) for name in TASK_NAMES}
    return MedDataset(ArrayImageSet(images, labels), texts, tasks)
