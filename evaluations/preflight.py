"""Pre-flight checks: what used to fail, or silently score nothing, only after minutes of training is refused before
any work, naming the config field at fault.

``check_config`` runs in ``StudyConfig.check_runnable`` (so ``artmed run`` exits 2 with ``artmed run: error: ...``):
no attack to run, a defense whose ``attacks`` filter matches none of them, a target the headline task has no class for
(an empty ASR), phantom sizes that cannot fit in memory, result folders that cannot be written, a tokenizer vocabulary
that is not one. ``check_study_data`` runs on each seed's data before its first model is trained: missing training
images, a task whose test images cover one class, a poison rate asking for more images than can be poisoned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from artmed.attacks.pipeline import poison_training_set
from artmed.attacks.steps import ESTIMATOR
from artmed.constants import CHEXPERT_LABELS
from artmed.data.adapt_medclip import COVID_CLASSES, RSNA_CLASSES
from artmed.data.dataset import DEFAULT_MAX_BYTES, FileImageSet
from artmed.data.label_table import check_files_exist
from artmed.data.tasks import CHEXPERT5_CLASSES, TASK_CLASSES
from artmed.evaluations.scoring import target_index
from artmed.validation import FieldError

if TYPE_CHECKING:
    from artmed.evaluations.config import ModelConfig, StudyConfig
    from artmed.evaluations.sources import StudyData

__all__ = ["REQUIRED_TOKENS", "check_config", "check_study_data", "check_vocab", "headline_classes"]

REQUIRED_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
"""The special tokens MedCLIP's BERT text encoder uses: a vocabulary without one cannot encode a prompt."""
_TASK_SOURCE_CLASSES: dict[str, tuple[str, ...]] = {
    "rsna": RSNA_CLASSES,
    "covid": COVID_CLASSES,
    "mimic_cxr": CHEXPERT5_CLASSES,
    "chexpert": CHEXPERT5_CLASSES,
}
_PHANTOM_TASKS = 3
"""The phantom source generates this many zero-shot tasks of ``n_test`` images each."""


# ---------------------------------------------------------------------------------------------- the config
def check_config(config: StudyConfig) -> None:
    """FieldErrors (ValueErrors naming the field) for what the config alone shows cannot run or would score nothing."""
    _check_attacks(config)
    _check_sizes(config)
    _check_result_folders(Path(config.output_dir))
    _check_model_vocab(config.model)


def headline_classes(config: StudyConfig) -> tuple[str, ...]:
    """The class names of the headline task (``config.task``), known from its source without reading it."""
    for spec in config.tasks:
        if spec.name == config.task:
            return _TASK_SOURCE_CLASSES[spec.source]
    assert config.task is not None  # StudyConfig resolves the headline task
    return TASK_CLASSES[config.task]


def _check_attacks(config: StudyConfig) -> None:
    """At least one attack; every defense filter matches one; every attack's target is a class of the headline task
    (else its ASR and the defenses' triggered-input scores are empty)."""
    if not config.attacks:
        raise FieldError(
            "config.attacks: no attack listed, so the study would train and score nothing; list at least "
            "one, e.g. [{attack: clean}, {attack: badmatch}]"
        )
    attacks = [cast(str, spec.attack) for spec in config.attacks]  # AttackSpec resolves every attack's label
    listed = sorted(set(attacks))
    for i, defense in enumerate(config.defenses):
        if not any(defense.runs_on(attack) for attack in attacks):
            raise FieldError(
                f"config.defenses[{i}].attacks: {defense.attacks} matches none of the study's attacks "
                f"{listed}, so defense {defense.name!r} would never run; list one of them or drop the "
                "filter"
            )
    classes = list(headline_classes(config))
    for i, spec in enumerate(config.attacks):
        if spec.attack != "clean" and target_index(classes, spec.target) is None:
            valid = [label for label in CHEXPERT_LABELS if target_index(classes, label) is not None]
            raise FieldError(
                f"config.attacks[{i}].target: {spec.target!r} is no class of the headline task "
                f"{config.task!r} (classes {classes}), so its attack success rate would be empty; "
                f"use one of {valid} or set config.task to a task that has it"
            )


def _check_sizes(config: StudyConfig) -> None:
    """Arrays the study holds in memory: the phantom source's generated images, and each task's test images."""
    data = config.data
    assert data.image_size is not None  # StudyConfig resolves it
    pixels = data.image_size**2 * 4
    if data.n_test is not None and data.n_test * pixels > DEFAULT_MAX_BYTES:
        gib = data.n_test * pixels / 1024**3
        raise FieldError(
            f"config.data.n_test: {data.n_test} test images per task are {gib:.1f} GiB as float32 "
            f"at {data.image_size} px, more than the harness holds in memory "
            f"({DEFAULT_MAX_BYTES / 1024**3:.0f} GiB); lower n_test (e.g. 1000)"
        )
    if data.source != "phantom":
        return  # real training images stay on disk, read batch by batch
    assert data.n_train is not None and data.n_test is not None  # DataConfig fills PHANTOM_SIZES
    need = (data.n_train + data.n_shadow + _PHANTOM_TASKS * data.n_test) * pixels
    limit = _memory_limit()
    if need > limit:
        raise FieldError(
            f"config.data.n_train: the phantom source generates n_train + n_shadow = "
            f"{data.n_train + data.n_shadow} training images in memory ({need / 1024**3:.1f} GiB as "
            f"float32 at {data.image_size} px with the test images), more than half of this machine's "
            f"memory ({2 * limit / 1024**3:.1f} GiB); lower n_train"
        )


def _memory_limit() -> int:
    """Half the machine's physical memory (the harness copies the training arrays: poisoned sets, batches)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def _check_result_folders(output: Path) -> None:
    """The folders a resumed study writes cells and models into can be written (``output_dir`` itself is
    ``check_writable``'s): ``cells``, its kind folders and ``models`` (a model folder is replaced from there), else
    every cell would train, then fail to save."""
    cells, models = output / "cells", output / "models"
    kinds = sorted(p for p in cells.iterdir() if p.is_dir() and not p.name.startswith(".")) if cells.is_dir() else []
    for folder in (cells, *kinds, models):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise FieldError(
                f"config.output_dir: {folder} is not writable, so no finished cell or model could be "
                "saved there; fix its permissions (chmod u+w) or use another output folder"
            )


def _check_model_vocab(model: ModelConfig) -> None:
    """The tokenizer's vocab.txt (``model.tokenizer``, else the checkpoint's folder), when there is one."""
    if model.tokenizer is not None:
        folder = Path(model.tokenizer)
    elif model.checkpoint is not None:
        checkpoint = Path(model.checkpoint)
        folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    else:
        return
    vocab = folder if folder.name == "vocab.txt" else folder / "vocab.txt"
    if vocab.is_file():
        check_vocab(vocab, "config.model.tokenizer")


def check_vocab(path: str | Path, field: str = "vocab") -> None:
    """A FieldError naming ``field`` unless ``path`` is a BERT vocabulary: UTF-8 text, one token a line, none listed
    twice, holding ``REQUIRED_TOKENS``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FieldError(
            f"{field}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); it is no BERT "
            "vocabulary (vocab.txt: one token a line)"
        ) from exc
    except OSError as exc:
        raise FieldError(f"{field}: cannot read {path}: {exc}") from exc
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    while tokens and not tokens[-1]:
        tokens.pop()
    if not tokens:
        raise FieldError(f"{field}: {path} is empty; a BERT vocabulary lists one token a line")
    missing = [token for token in REQUIRED_TOKENS if token not in set(tokens)]
    if missing:
        raise FieldError(
            f"{field}: {path} lacks the special token(s) {missing} the text encoder needs (it has "
            f"{len(tokens)} lines, first {tokens[:3]}); is it the text encoder's vocab.txt?"
        )


# ---------------------------------------------------------------------------------------------- a seed's data
def check_study_data(config: StudyConfig, data: StudyData) -> StudyData:
    """``data`` when it can be trained and scored on; else a FieldError naming the field: a training or shadow image
    file that does not exist, a task whose test images cover fewer than two classes, an attack's poisoning that cannot
    be done (a ``percent_poison`` asking for more images than can be poisoned)."""
    for images, what in ((data.x_train, "training"), (data.x_shadow, "shadow")):
        if isinstance(images, FileImageSet):
            try:
                check_files_exist(list(images.paths), f"config.data.root ({what} images)")
            except ValueError as exc:
                raise FieldError(f"{exc}; fix the image list or image_root") from exc
    names = [spec.name for spec in config.tasks]
    for name, task in data.tasks.items():
        present = np.unique(np.asarray(task.targets))
        if len(present) < 2:
            where = f"config.tasks[{names.index(name)}]" if name in names else f"config.task ({name})"
            shown = [task.class_names[int(k)] for k in present]
            raise FieldError(
                f"{where}: task {name!r} has test images of {len(present)} class(es) only {shown} of "
                f"{list(task.class_names)}; its accuracy and AUC would mean nothing: give a test set "
                "with images of every class"
            )
    for i, spec in enumerate(config.attacks):
        if spec.uses(ESTIMATOR):  # its data step attacks the model the victim starts from: none yet
            continue
        try:
            poison_training_set(spec, data.x_train, data.y_train)  # seeded and lazy: it chooses the rows only
        except ValueError as exc:
            raise FieldError(f"config.attacks[{i}]: {exc}; lower percent_poison") from exc
    return data
