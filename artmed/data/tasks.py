"""The three built-in zero-shot tasks on phantom radiographs, shaped like the paper's evaluation sets.

"rsna_like": Normal vs Pneumonia; "covid_like": Normal vs COVID (bilateral peripheral opacities); "chexpert5":
Atelectasis / Cardiomegaly / Consolidation / Edema / Pleural Effusion, one of them per image. Test images come
from a seed stream disjoint from the training images'; prompts are built from `artmed.data.reports` vocabulary.
"""

from __future__ import annotations

import numpy as np

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.dataset import ArrayImageSet, ZeroShotTask
from artmed.data.phantom import PhantomGenerator
from artmed.data.reports import finding_phrases

TASK_NAMES: tuple[str, ...] = ("rsna_like", "covid_like", "chexpert5")
CHEXPERT5_CLASSES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "rsna_like": ("Normal", "Pneumonia"),
    "covid_like": ("Normal", "COVID"),
    "chexpert5": CHEXPERT5_CLASSES,
}
_STREAMS = {"train": 0, "texts": 1, "rsna_like": 2, "covid_like": 3, "chexpert5": 4}
_COL = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
_COVID_PHRASES: tuple[str, ...] = (
    "bilateral peripheral opacities",
    "patchy opacities in both lungs",
    "multifocal pneumonia",
    "bilateral patchy opacities at both lung bases",
    "hazy opacities in the periphery of both lungs",
    "ground glass opacities in both lower lungs",
    "peripheral airspace opacities bilaterally",
    "multifocal patchy opacities from viral pneumonia",
)


def stream_seed(seed: int, stream: str) -> int:
    """An independent seed for one data stream ("train", "texts" or a task name) of experiment seed `seed`."""
    if stream not in _STREAMS:
        raise ValueError(f"unknown stream {stream!r}; expected one of {sorted(_STREAMS)}")
    return int(np.random.SeedSequence([int(seed), 0x7A5C, _STREAMS[stream]]).generate_state(1)[0])


def _pick(phrases: list[str], k: int, salt: int) -> list[str]:
    """k distinct phrases spread over the list, the same every call."""
    phrases = list(dict.fromkeys(phrases))
    if len(phrases) <= k:
        return phrases
    idx = np.random.default_rng(salt).choice(len(phrases), size=k, replace=False)
    return [phrases[i] for i in sorted(idx)]


def task_prompts(name: str, n_prompts: int = 8) -> dict[str, list[str]]:
    """Class prompts of a built-in task: `n_prompts` phrases per class from the report vocabulary."""
    if name not in TASK_CLASSES:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_NAMES)}")
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    prompts: dict[str, list[str]] = {}
    for j, cls in enumerate(TASK_CLASSES[name]):
        if cls == "Normal":
            phrases = finding_phrases("No Finding")
        elif cls == "COVID":
            phrases = list(_COVID_PHRASES)
        else:
            phrases = finding_phrases(cls)
        prompts[cls] = _pick(phrases, n_prompts, salt=j)
    return prompts


def _class_labels(name: str, cls: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 14) labels of test images of one class: the class finding, plus plausible companions."""
    y = np.zeros((n, NUM_LABELS), dtype=np.float32)
    devices = rng.random(n) < 0.15
    y[devices, _COL["Support Devices"]] = 1.0
    if cls == "Normal":
        y[:, _COL["No Finding"]] = 1.0
    elif cls == "Pneumonia":
        y[:, _COL["Pneumonia"]] = 1.0
        y[rng.random(n) < 0.5, _COL["Lung Opacity"]] = 1.0
        y[rng.random(n) < 0.3, _COL["Consolidation"]] = 1.0
    elif cls == "COVID":
        y[:, _COL["Pneumonia"]] = 1.0
        y[:, _COL["Lung Opacity"]] = 1.0
    else:  # chexpert5: exactly one of the five, nothing else but devices
        y[:, _COL[cls]] = 1.0
    return y


def make_task(name: str, n: int = 200, image_size: int = 64, seed: int = 0, n_prompts: int = 8) -> ZeroShotTask:
    """A built-in zero-shot task with `n` class-balanced held-out phantom test images, shuffled."""
    if name not in TASK_CLASSES:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_NAMES)}")
    classes = TASK_CLASSES[name]
    if n < len(classes):
        raise ValueError(f"task {name!r} needs n >= {len(classes)} test images, got {n}")
    task_seed = stream_seed(seed, name)
    rng = np.random.default_rng([task_seed, 0])
    counts = np.full(len(classes), n // len(classes))
    counts[: n % len(classes)] += 1
    targets = np.repeat(np.arange(len(classes)), counts)
    labels = np.concatenate([_class_labels(name, c, k, rng) for c, k in zip(classes, counts)])
    order = rng.permutation(n)
    targets, labels = targets[order], labels[order]
    peripheral = (targets == classes.index("COVID")) if name == "covid_like" else None
    images = PhantomGenerator(image_size, task_seed).generate(labels, peripheral_opacity=peripheral)
    return ZeroShotTask(name, list(classes), task_prompts(name, n_prompts), ArrayImageSet(images, labels), targets)
