"""Built-in zero-shot tasks and the default dataset: validity, balance, held-out seeds, determinism."""

import numpy as np
import pytest

from artmed.constants import CHEXPERT_LABELS
from artmed.data import ArrayImageSet, MedDataset, ZeroShotTask
from artmed.data.default import make_default_dataset
from artmed.data.reports import report_corpus
from artmed.data.tasks import CHEXPERT5_CLASSES, TASK_NAMES, make_task, stream_seed, task_prompts

COL = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
SIZE = 48


@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name, n=25, image_size=SIZE, seed=3) for name in TASK_NAMES}


def test_tasks_are_valid_and_balanced(tasks):
    expected = {
        "rsna_like": ["Normal", "Pneumonia"],
        "covid_like": ["Normal", "COVID"],
        "chexpert5": list(CHEXPERT5_CLASSES),
    }
    for name, task in tasks.items():
        assert isinstance(task, ZeroShotTask) and task.name == name
        assert task.class_names == expected[name] and list(task.prompts) == expected[name]
        assert len(task.images) == 25 and task.images.image_shape == (1, SIZE, SIZE)
        counts = np.bincount(task.targets, minlength=task.num_classes)
        assert counts.max() - counts.min() <= 1
        assert not np.array_equal(task.targets, np.sort(task.targets)), "classes are shuffled"
        x = task.images.to_array()
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_task_labels_match_targets(tasks):
    for task in tasks.values():
        y = task.images.labels
        for k, cls in enumerate(task.class_names):
            rows = y[task.targets == k]
            if cls == "Normal":
                assert (rows[:, 0] == 1).all() and not rows[:, 1:13].any()
            elif cls in ("Pneumonia", "COVID"):
                assert (rows[:, COL["Pneumonia"]] == 1).all() and (rows[:, 0] == 0).all()
    y = tasks["chexpert5"].images.labels
    five = y[:, [COL[c] for c in CHEXPERT5_CLASSES]]
    assert ((five == 1).sum(axis=1) == 1).all(), "exactly one of the five per image"
    np.testing.assert_array_equal(five.argmax(axis=1), tasks["chexpert5"].targets)
    others = np.delete(y, [0, COL["Support Devices"], *[COL[c] for c in CHEXPERT5_CLASSES]], axis=1)
    assert not others.any()


def test_covid_images_show_bilateral_peripheral_opacity(tasks):
    task = tasks["covid_like"]
    x = task.images.to_array()[:, 0]
    covid, normal = x[task.targets == 1], x[task.targets == 0]
    lateral = np.r_[6:14, SIZE - 14 : SIZE - 6]  # columns over both lateral lung fields
    rows = slice(SIZE // 3, 2 * SIZE // 3)
    assert covid[:, rows, lateral].mean() > normal[:, rows, lateral].mean() + 0.02


def test_prompts_come_from_the_report_vocabulary():
    words = {w.strip(".,;").lower() for s in report_corpus()[0] for w in s.split()}
    for name in TASK_NAMES:
        prompts = task_prompts(name)
        for cls, ps in prompts.items():
            assert len(ps) >= 3 and len(set(ps)) == len(ps), (name, cls)
            if cls != "COVID":
                assert all(set(p.lower().split()) <= words for p in ps), (name, cls)
    assert task_prompts("rsna_like") == task_prompts("rsna_like")
    assert len(task_prompts("chexpert5", n_prompts=2)["Edema"]) == 2
    with pytest.raises(ValueError, match="unknown task"):
        task_prompts("mnist")


def test_task_determinism_and_held_out_streams():
    a = make_task("rsna_like", n=6, image_size=32, seed=1)
    b = make_task("rsna_like", n=6, image_size=32, seed=1)
    c = make_task("rsna_like", n=6, image_size=32, seed=2)
    assert a.images.to_array().tobytes() == b.images.to_array().tobytes()
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images.to_array(), c.images.to_array())
    seeds = {stream_seed(0, s) for s in ("train", "texts", *TASK_NAMES)}
    assert len(seeds) == 5
    assert stream_seed(0, "train") != stream_seed(1, "train")
    with pytest.raises(ValueError, match="n >= 5"):
        make_task("chexpert5", n=3)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("covid", n=10)


def test_default_dataset():
    ds = make_default_dataset(n_train=40, n_test=10, image_size=SIZE, seed=0, n_texts=120)
    assert isinstance(ds, MedDataset) and isinstance(ds.train, ArrayImageSet)
    assert len(ds.train) == 40 and ds.train.image_size == SIZE and len(ds.texts) == 120
    assert set(ds.tasks) == set(TASK_NAMES) and all(len(t.images) == 10 for t in ds.tasks.values())
    assert (ds.train.labels[:, 0] == 1).any() and (ds.train.labels[:, 1:13] != 0).any()
    again = make_default_dataset(n_train=40, n_test=10, image_size=SIZE, seed=0, n_texts=120)
    assert ds.train.to_array().tobytes() == again.train.to_array().tobytes()
    assert ds.texts.sentences == again.texts.sentences
    other = make_default_dataset(n_train=40, n_test=10, image_size=SIZE, seed=1, n_texts=120)
    assert not np.array_equal(ds.train.to_array(), other.train.to_array())
    train = ds.train.to_array()
    for task in ds.tasks.values():  # test images are not copies of training images
        test = task.images.to_array()
        assert not (np.abs(test[:, None] - train[None]).reshape(len(test), len(train), -1).max(-1) < 1e-6).any()
    assert len(make_default_dataset(n_train=4, n_test=5, image_size=32).texts) == len(report_corpus()[0])
