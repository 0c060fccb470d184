"""MedCLIP's sampled zero-shot prompts, as the released code draws them, seeded.

The paper's code (MedCLIP's ``medclip/constants.py`` and ``medclip/prompts.py``, used by ``scripts/zero_shot.py``)
does not use fixed prompts: per evaluation run it samples ``n=10`` sentences per class. Disease classes come from
templates, every combination of one word per slot, in the slot order of MedCLIP's dicts (``CHEXPERT_CLASS_PROMPTS``
for the five CheXpert competition classes: severity x subtype x location, except Pleural Effusion, whose dict lists
severity, location, subtype and so reads "small left bilateral pleural effusion"; ``COVID_CLASS_PROMPTS``:
adjective x description x subtype x location; ``RSNA_CLASS_PROMPTS`` (Pneumonia): adjective x subtype x location).
``random.sample(candidates, n)`` picks ``n`` of them from Python's random state, which ``zero_shot.py`` seeds once
(42) and then draws its ``n_runs=5`` prompt sets from in a row, classes in the dicts' order. The normal class
("No Finding"; the data sets call it "Normal") takes ``n`` sentences of MedCLIP's sentence-label table whose only
label is No Finding (``generate_class_prompts(sent_df, ['No Finding'], n=10)``: ``DataFrame.sample(n)``, i.e.
``numpy.random.choice(len, n, replace=False)`` on numpy's seeded global state).

Here the templates are data (copied verbatim, typos, empty words and the repeated "bilateral pleural effusion"
included) and the draws use their own generators: ``random.Random(seed)`` for the templates and
``numpy.random.RandomState(seed)`` for the normal sentences, each a single stream over consecutive draws, as in the
released script. Sentences have their whitespace collapsed ("" slots leave double or edge spaces in the released
strings); BERT tokenisation ignores whitespace, so the tokens are the released ones. The released sampler returns
every candidate when ``n`` is not below their number; here asking for more prompts than exist is an error.
RSNA's template has one empty combination (every slot ""): the released code prompts with a blank sentence (BERT
encodes it as ``[CLS] [SEP]``) when it is drawn; artmed keeps it among the candidates, so the draws are the released
ones, but drops it from a drawn set (that class then has ``n - 1`` prompts in that draw; with seed 42 no draw of the
released five has it), since a prompt must be a non-empty sentence.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np

from artmed.constants import CHEXPERT_LABELS

CHEXPERT_CLASS_PROMPTS: dict[str, dict[str, list[str]]] = {
    "Atelectasis": {
        "severity": ["", "mild", "minimal"],
        "subtype": [
            "subsegmental atelectasis",
            "linear atelectasis",
            "trace atelectasis",
            "bibasilar atelectasis",
            "retrocardiac atelectasis",
            "bandlike atelectasis",
            "residual atelectasis",
        ],
        "location": [
            "at the mid lung zone",
            "at the upper lung zone",
            "at the right lung zone",
            "at the left lung zone",
            "at the lung bases",
            "at the right lung base",
            "at the left lung base",
            "at the bilateral lung bases",
            "at the left lower lobe",
            "at the right lower lobe",
        ],
    },
    "Cardiomegaly": {
        "severity": [""],
        "subtype": [
            "cardiac silhouette size is upper limits of normal",
            "cardiomegaly which is unchanged",
            "mildly prominent cardiac silhouette",
            "portable view of the chest demonstrates stable cardiomegaly",
            "portable view of the chest demonstrates mild cardiomegaly",
            "persistent severe cardiomegaly",
            "heart size is borderline enlarged",
            "cardiomegaly unchanged",
            "heart size is at the upper limits of normal",
            "redemonstration of cardiomegaly",
            "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
            "cardiac silhouette size is mildly enlarged",
            "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less "
            "prominent",
            "heart size remains at mildly enlarged",
            "persistent cardiomegaly with prominent upper lobe vessels",
        ],
        "location": [""],
    },
    "Consolidation": {
        "severity": ["", "increased", "improved", "apperance of"],
        "subtype": [
            "bilateral consolidation",
            "reticular consolidation",
            "retrocardiac consolidation",
            "patchy consolidation",
            "airspace consolidation",
            "partial consolidation",
        ],
        "location": [
            "at the lower lung zone",
            "at the upper lung zone",
            "at the left lower lobe",
            "at the right lower lobe",
            "at the left upper lobe",
            "at the right uppper lobe",
            "at the right lung base",
            "at the left lung base",
        ],
    },
    "Edema": {
        "severity": ["", "mild", "improvement in", "presistent", "moderate", "decreased"],
        "subtype": ["pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"],
        "location": [""],
    },
    "Pleural Effusion": {
        "severity": ["", "small", "stable", "large", "decreased", "increased"],
        "location": ["left", "right", "tiny"],
        "subtype": ["bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"],
    },
}
"""MedCLIP ``constants.CHEXPERT_CLASS_PROMPTS``, verbatim (slot order is composition order)."""

COVID_CLASS_PROMPTS: dict[str, dict[str, list[str]]] = {
    "COVID": {
        "adjective": ["patchy", "confluent"],
        "description": ["ground glass"],
        "subtype": ["opacity", "consolidation"],
        "location": ["in peripheral", "in mid", "in lower"],
    },
}
"""MedCLIP ``constants.COVID_CLASS_PROMPTS``, verbatim."""

RSNA_CLASS_PROMPTS: dict[str, dict[str, list[str]]] = {
    "Pneumonia": {
        "adjective": ["round", "early", "focal", "multifocal", "small", ""],
        "subtype": ["bacterial", "viral", "mycoplasma", ""],
        "location": [
            "at the mid lung zone",
            "at the upper lung zone",
            "at the right lung zone",
            "at the left lung zone",
            "at the lung bases",
            "at the right lung base",
            "at the left lung base",
            "at the bilateral lung bases",
            "at the left lower lobe",
            "at the right lower lobe",
            "at the left middle lobe",
            "at the right middle lobe",
            "",
        ],
    },
}
"""MedCLIP ``constants.RSNA_CLASS_PROMPTS``, verbatim."""

TEMPLATES: dict[str, dict[str, list[str]]] = {**CHEXPERT_CLASS_PROMPTS, **COVID_CLASS_PROMPTS, **RSNA_CLASS_PROMPTS}
"""Every templated class; a task's classes are sampled in this order (the released dicts' order)."""
NORMAL_CLASSES: tuple[str, ...] = ("No Finding", "Normal")
"""Class names that take No-Finding-only sentences instead of a template."""
DEFAULT_N: int = 10
DEFAULT_DRAWS: int = 5
DEFAULT_SEED: int = 42
"""``scripts/zero_shot.py``: ``n=10`` prompts per class, ``n_runs=5`` draws, ``Config.seed = 42``."""


def template_candidates(cls: str) -> list[str]:
    """Every sentence of class ``cls``'s MedCLIP template, in the released order (repeats and RSNA's one empty
    sentence kept)."""
    if cls not in TEMPLATES:
        raise ValueError(
            f"no MedCLIP prompt template for class {cls!r}; templated classes: {list(TEMPLATES)}, "
            f"normal classes (No-Finding sentences): {list(NORMAL_CLASSES)}"
        )
    return [" ".join(" ".join(words).split()) for words in product(*TEMPLATES[cls].values())]


def no_finding_sentences(sentences: Sequence[str], labels: np.ndarray) -> list[str]:
    """The sentences whose only label is No Finding, in order: ``generate_class_prompts``'s filter on a
    (M, 14) CheXpert label matrix (NaN counts as 0, so an uncertain -1 elsewhere excludes a sentence; sentences of
    4 characters or fewer are dropped)."""
    y = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0)
    if y.ndim != 2 or y.shape != (len(sentences), len(CHEXPERT_LABELS)):
        raise ValueError(f"labels must be ({len(sentences)}, {len(CHEXPERT_LABELS)}), got {y.shape}")
    nf = CHEXPERT_LABELS.index("No Finding")
    others = [i for i in range(len(CHEXPERT_LABELS)) if i != nf]
    keep = (y[:, nf] == 1) & (y[:, others] == 0).all(axis=1)
    return [s for s, k in zip(sentences, keep) if k and len(s) > 4]


def _classes(task_classes: Sequence[str] | str) -> list[str]:
    if isinstance(task_classes, str):
        from artmed.data.tasks import TASK_CLASSES

        if task_classes not in TASK_CLASSES:
            raise ValueError(
                f"unknown task {task_classes!r}; give a built-in task name ({list(TASK_CLASSES)}) "
                "or a list of class names"
            )
        return list(TASK_CLASSES[task_classes])
    classes = list(task_classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"task_classes must be at least 2 distinct class names, got {classes}")
    unknown = [c for c in classes if c not in TEMPLATES and c not in NORMAL_CLASSES]
    if unknown:
        raise ValueError(
            f"no MedCLIP prompts for classes {unknown}; templated classes: {list(TEMPLATES)}, "
            f"normal classes (No-Finding sentences): {list(NORMAL_CLASSES)}"
        )
    if sum(c in NORMAL_CLASSES for c in classes) > 1:
        raise ValueError(f"task_classes name the normal class twice: {classes}")
    return classes


def medclip_prompt_draws(
    task_classes: Sequence[str] | str,
    draws: int = DEFAULT_DRAWS,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    normal_sentences: Sequence[str] | None = None,
) -> list[dict[str, list[str]]]:
    """``draws`` consecutive prompt sets ``{class: [n sentences]}`` (classes in ``task_classes`` order), sampled as
    MedCLIP's ``zero_shot.py`` does: templated classes from one ``random.Random(seed)`` stream, the normal class
    ("Normal"/"No Finding") from one ``numpy.random.RandomState(seed)`` stream over ``normal_sentences``
    (No-Finding-only sentences; default: the phantom report vocabulary's, ``finding_phrases("No Finding")``).

    ``task_classes`` is a list of class names or a built-in task name ("rsna_like", "covid_like", "chexpert5").
    A drawn set has ``n`` prompts per class, except that RSNA's empty template sentence is left out when drawn.
    The same arguments give the same sets; set ``i`` is the ``i``-th draw of the streams, so ``draws=1`` gives
    the first set of any longer run.
    """
    classes = _classes(task_classes)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (prompts per class) must be an integer >= 1, got {n!r}")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    n, draws = int(n), int(draws)
    candidates = {c: template_candidates(c) for c in TEMPLATES if c in classes}
    for c, cands in candidates.items():
        if n > len(cands):
            raise ValueError(f"class {c!r} has {len(cands)} MedCLIP template prompts; cannot draw n={n}")
    normal = next((c for c in classes if c in NORMAL_CLASSES), None)
    pool: list[str] = []
    if normal is not None:
        if normal_sentences is None:
            from artmed.data.reports import finding_phrases

            normal_sentences = finding_phrases("No Finding")
        if isinstance(normal_sentences, str):
            raise ValueError("normal_sentences must be a list of sentences, not one string")
        pool = list(normal_sentences)
        bad = [i for i, s in enumerate(pool) if not isinstance(s, str) or not s.strip()]
        if bad:
            raise ValueError(f"normal_sentences {bad[:5]} are not non-empty strings")
        if n > len(pool):
            raise ValueError(f"class {normal!r} needs n={n} No-Finding sentences, only {len(pool)} given")
    elif normal_sentences is not None:
        raise ValueError(f"normal_sentences given but no normal class ({list(NORMAL_CLASSES)}) in {classes}")
    template_rng, normal_rng = random.Random(int(seed)), np.random.RandomState(int(seed) % 2**32)
    sets = []
    for _ in range(draws):
        drawn = {
            c: [s for s in (template_rng.sample(cands, n) if n < len(cands) else cands) if s]
            for c, cands in candidates.items()
        }
        if normal is not None:
            drawn[normal] = (
                [pool[i] for i in normal_rng.choice(len(pool), n, replace=False)] if n < len(pool) else list(pool)
            )
        sets.append({c: drawn[c] for c in classes})
    return sets


def medclip_class_prompts(
    task_classes: Sequence[str] | str,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    normal_sentences: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """One MedCLIP prompt set ``{class: [n sentences]}``: the first draw of ``medclip_prompt_draws``."""
    return medclip_prompt_draws(task_classes, draws=1, n=n, seed=seed, normal_sentences=normal_sentences)[0]


def check_prompt_sets(prompt_sets: Sequence[Mapping[str, Sequence[str]]], classes: Sequence[str]) -> None:
    """ValueError unless ``prompt_sets`` is a non-empty list of prompt dicts whose classes are ``classes``, in order."""
    if isinstance(prompt_sets, Mapping) or not prompt_sets:
        raise ValueError("prompt_sets must be a non-empty list of {class: [sentences]} dicts")
    for i, p in enumerate(prompt_sets):
        if not isinstance(p, Mapping) or list(p) != list(classes):
            got = list(p) if isinstance(p, Mapping) else type(p).__name__
            raise ValueError(f"prompt set {i} has classes {got}; the estimator's are {list(classes)}")
