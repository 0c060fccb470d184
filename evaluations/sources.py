"""A study config's data and base model: the built-in phantoms or a user's copy of MIMIC-CXR-JPG, CheXpert or
MedCLIP's CSVs; zero-shot tasks from RSNA, COVID, MIMIC-5x200 and CheXpert-5x200; a tiny model, a released-size
model from scratch, or released weights.

``check_inputs`` checks, cheaply and before any work, that every path the config names exists and looks like what
its field says (``StudyConfig.check_runnable`` runs it); ``load_study_data`` and ``build_base_estimator`` build what
the harness trains and scores. Real training and shadow images stay on disk (``FileImageSet``, read batch by batch);
each task's test images (at most ``data.n_test``) are decoded once per seed and held in memory, as the harness
triggers and scores them for every model.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import torch

from artmed.constants import CHEXPERT_LABELS
from artmed.data.adapt_chexpert import load_chexpert
from artmed.data.adapt_covid import CLASS_ALIASES, LABEL_COLUMNS, PATH_COLUMNS, load_covid
from artmed.data.adapt_medclip import RSNA_CLASSES, load_binary_meta, load_medclip_images, load_sentence_labels
from artmed.data.adapt_mimic import CHEXPERT_TABLE, SPLIT_TABLE, load_mimic_images
from artmed.data.adapt_reports import load_reports, reports_to_pool
from artmed.data.adapt_rsna import load_rsna
from artmed.data.dataset import DEFAULT_MAX_BYTES, ArrayImageSet, FileImageSet, ImageSet, TextPool, ZeroShotTask
from artmed.data.default import make_default_dataset
from artmed.data.five_by_200 import five_by_200_task
from artmed.data.label_table import find_table, open_text, read_table, resolve_path
from artmed.data.labeler import read_report
from artmed.data.report_sampling import ReportSampler
from artmed.estimator import MedCLIPEstimator
from artmed.models import build_medclip, load_medclip, load_tokenizer
from artmed.models.config import PRESETS
from artmed.progress import tqdm
from artmed.validation import FieldError, blame

if TYPE_CHECKING:
    from artmed.evaluations.config import DataConfig, ModelConfig, StudyConfig, TaskSpec

__all__ = ["StudyData", "build_base_estimator", "check_inputs", "load_study_data"]

RSNA_LABELS = "stage_2_train_labels.csv"
CHEXPERT_CSV = "train.csv"
SENTENCE_LABELS = "sentence-label.csv"
TRAIN_META = "*-train-meta.csv"


@dataclass
class StudyData:
    """What one seed of a study trains and scores on: training and shadow images (arrays for the phantoms, lazy
    ImageSets for real data) with their (N, 14) labels, the text pool and the zero-shot tasks (the headline
    included).

    ``task_images``: each task's test images as the files they were read from (``FileImageSet``, for triggering them
    on the native image; tasks from files only). ``reports``: with a ``text_sampling: own_report`` training, each
    training image's raw report (None where it has none), in the order of ``x_train``; ``sentence_table``: the text
    pool is MedCLIP's sentence-label.csv (the released own-report labels are looked up there)."""

    x_train: np.ndarray | ImageSet
    y_train: np.ndarray
    x_shadow: np.ndarray | ImageSet
    y_shadow: np.ndarray
    texts: TextPool
    tasks: dict[str, ZeroShotTask]
    task_images: dict[str, FileImageSet] = field(default_factory=dict)
    reports: list[str | None] | None = None
    sentence_table: bool = False


# ---------------------------------------------------------------------------------------------- the data
def load_study_data(config: StudyConfig, seed: int) -> StudyData:
    """The data of one study seed. Phantom data is generated as ever (``n_train + n_shadow`` images, the first
    ``n_train`` for training); real training images are a seeded split of the source's training images, less every
    task's test images: ``n_shadow`` for the shadow set, then at most ``n_train`` for training. Each task keeps a seeded
    subset of at most ``n_test`` test images."""
    data = config.data
    image_size = data.image_size
    assert image_size is not None  # StudyConfig resolves it (model.image_size, data.image_size or 224)
    tasks: dict[str, ZeroShotTask] = {}
    for i, spec in enumerate(config.tasks):
        with blame(f"config.tasks[{i}]"):
            task = _load_task(spec, image_size, _seed(seed, f"task:{spec.name}"))
            tasks[spec.name] = _capped(_styled_task(task, data), data.n_test, _seed(seed, f"test:{spec.name}"))
    _check_memory(tasks, image_size)
    files = {name: task.images for name, task in tasks.items() if isinstance(task.images, FileImageSet)}
    own_report = "own_report" in (config.train.text_sampling, config.pretrain.text_sampling)
    if data.source == "phantom":
        assert data.n_train is not None and data.n_test is not None  # DataConfig fills PHANTOM_SIZES
        phantom = make_default_dataset(
            n_train=data.n_train + data.n_shadow,
            n_test=data.n_test,
            image_size=image_size,
            seed=seed,
            n_texts=data.n_texts,
        )
        images, labels = phantom.train.to_array(), phantom.train.labels
        n = data.n_train
        no_reports: list[str | None] | None = [None] * n if own_report else None
        return StudyData(
            images[:n],
            labels[:n],
            images[n:],
            labels[n:],
            phantom.texts,
            _in_memory(tasks) or phantom.tasks,
            files,
            no_reports,
        )
    with blame("config.data.root"):
        pool = _held_out(_styled(_training_images(config), data), tasks)
    shadow, train = _split(len(pool), data.n_shadow, data.n_train, _seed(seed, "split"))
    x_train, x_shadow = pool.subset(train), pool.subset(shadow)
    with blame("config.data.reports_root"):
        texts, sentence_table = _text_pool(config, x_train)
        texts = _capped_texts(texts, data.n_texts, _seed(seed, "texts"))
        reports = _training_reports(config, x_train) if own_report else None
    return StudyData(
        x_train, x_train.labels, x_shadow, x_shadow.labels, texts, _in_memory(tasks), files, reports, sentence_table
    )


def own_report_sampler(data: StudyData, seed: int) -> ReportSampler | None:
    """The sampler pairing each training image with a sentence of its own report (``text_sampling: own_report``),
    seeded from study seed ``seed``; its fallbacks match the clean training labels (the released dataset draws them
    before a BadMatch relabelling). None when no training image owns a report."""
    if data.reports is None:
        return None
    sampler = ReportSampler.from_reports(
        data.reports,
        data.texts,
        labels="lookup" if data.sentence_table else "labeler",
        clean_table=data.sentence_table,
        seed=_seed(seed, "report_sampler"),
    )
    return sampler.with_fallback_labels(data.y_train)


def _seed(seed: int, stream: str) -> int:
    """An independent seed for one named draw of study seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), 0x50C3, zlib.crc32(stream.encode())]).generate_state(1)[0])


@overload
def _styled(images: FileImageSet, data: DataConfig) -> FileImageSet: ...
@overload
def _styled(images: ImageSet, data: DataConfig) -> ImageSet: ...
def _styled(images: ImageSet, data: DataConfig) -> ImageSet:
    """``images`` read with ``data``'s ``interpolation`` and ``pad`` (a ``FileImageSet``; the same object at the
    defaults)."""
    if not isinstance(images, FileImageSet) or (images.interpolation, images.pad) == (data.interpolation, data.pad):
        return images
    return FileImageSet(images.paths, images.labels, images.image_size, data.interpolation, data.pad)


def _styled_task(task: ZeroShotTask, data: DataConfig) -> ZeroShotTask:
    """``task`` with its test images read with ``data``'s ``interpolation`` and ``pad``."""
    images = _styled(task.images, data)
    return (
        task if images is task.images else ZeroShotTask(task.name, task.class_names, task.prompts, images, task.targets)
    )


def _capped(task: ZeroShotTask, n: int | None, seed: int) -> ZeroShotTask:
    """``task`` with a seeded subset of at most ``n`` of its images (order kept)."""
    if n is None or len(task.images) <= n:
        return task
    rows = np.sort(np.random.default_rng(seed).choice(len(task.images), size=n, replace=False))
    return ZeroShotTask(task.name, task.class_names, task.prompts, task.images.subset(rows), task.targets[rows])


def _check_memory(tasks: dict[str, ZeroShotTask], image_size: int) -> None:
    """The harness holds each task's test images as one array: refuse a task too big for that, naming n_test."""
    for name, task in tasks.items():
        need = len(task.images) * image_size**2 * 4
        if need > DEFAULT_MAX_BYTES:
            raise FieldError(
                f"config.data.n_test: task {name!r} has {len(task.images)} test images "
                f"({need / 1024**3:.1f} GiB as float32 at {image_size} px), more than the harness holds "
                "in memory; set config.data.n_test (e.g. 1000)"
            )


def _in_memory(tasks: dict[str, ZeroShotTask]) -> dict[str, ZeroShotTask]:
    """The tasks with their test images decoded once (``ArrayImageSet``), in the same order."""
    return {
        name: ZeroShotTask(
            name,
            task.class_names,
            task.prompts,
            ArrayImageSet(task.images.to_array(), task.images.labels),
            task.targets,
        )
        for name, task in tqdm(tasks.items(), desc="reading test images", leave=False)
    }


def _load_task(spec: TaskSpec, image_size: int, seed: int) -> ZeroShotTask:
    """One zero-shot task from its folder or CSV (see ``TaskSpec``)."""
    root = _task_root(spec)
    if spec.source == "covid":
        return load_covid(root, image_root=spec.image_root, image_size=image_size, name=spec.name)
    if spec.source == "rsna":
        if root.is_dir() or "patientId" in _columns(root):
            labels = root / RSNA_LABELS if root.is_dir() else root
            return load_rsna(labels, image_dir=spec.image_root, image_size=image_size, name=spec.name)
        return load_binary_meta(
            root, RSNA_CLASSES, spec.name, "rsna", image_root=spec.image_root, image_size=image_size
        )
    if root.is_file():  # MedCLIP's *-5x200-meta.csv (imgpath + the 14 labels)
        images: FileImageSet = load_medclip_images(root, spec.image_root, image_size)
    elif spec.source == "mimic_cxr":  # MedCLIP maps MIMIC's uncertain labels to 0 before drawing
        images = load_mimic_images(root, split="test", image_size=image_size, uncertain="zeros")
    else:  # GLoRIA's CheXpert-5x200: frontal training images
        images = load_chexpert(root / CHEXPERT_CSV, spec.image_root, image_size, frontal_only=True)
    return five_by_200_task(spec.name, images, seed)


def _training_images(config: StudyConfig) -> FileImageSet:
    """Every training image of a real source with its labels, lazily."""
    data = config.data
    root = _data_root(data)
    image_size = data.image_size
    assert image_size is not None  # StudyConfig resolves it
    if data.source == "mimic_cxr":
        return load_mimic_images(root, split="train", image_size=image_size)
    if data.source == "chexpert":
        csv_path = root / CHEXPERT_CSV if root.is_dir() else root
        return load_chexpert(csv_path, data.image_root, image_size)
    metas = sorted(root.glob(TRAIN_META)) if root.is_dir() else [root]
    parts = [load_medclip_images(meta, data.image_root, image_size) for meta in metas]
    return FileImageSet(
        [p for part in parts for p in part.paths], np.concatenate([part.labels for part in parts]), image_size
    )


def _data_root(data: DataConfig) -> Path:
    """``data.root`` of a real source (DataConfig refuses a real source without one)."""
    assert data.root is not None
    return Path(data.root)


def _task_root(spec: TaskSpec) -> Path:
    """``spec.root`` (StudyConfig fills a mimic_cxr / chexpert task's missing root with ``data.root``)."""
    assert spec.root is not None
    return Path(spec.root)


def _held_out(pool: FileImageSet, tasks: dict[str, ZeroShotTask]) -> FileImageSet:
    """``pool`` without the images any task tests on (CheXpert-5x200 is drawn from CheXpert's training images)."""
    tested = {path for task in tasks.values() for path in getattr(task.images, "paths", ())}
    return pool.subset(np.array([path not in tested for path in pool.paths], dtype=bool)) if tested else pool


def _split(n: int, n_shadow: int, n_train: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (shadow, train) row indices of a seeded permutation of ``n`` images: ``n_shadow``, then up to
    ``n_train`` (None: the rest)."""
    if n <= n_shadow:
        raise FieldError(
            f"config.data.n_shadow ({n_shadow}) leaves no training images: the source has {n} (after "
            "removing the tasks' test images); lower n_shadow"
        )
    order = np.random.default_rng(seed).permutation(n)
    rest = order[n_shadow:] if n_train is None else order[n_shadow : n_shadow + n_train]
    return np.sort(order[:n_shadow]), np.sort(rest)


def _text_pool(config: StudyConfig, train: FileImageSet) -> tuple[TextPool, bool]:
    """The unpaired text pool: a file (MedCLIP's sentence-label.csv, or reports to label) or folder at
    ``reports_root``; for MIMIC-CXR a reports tree, of which the training images' studies are read. With it, whether
    it is MedCLIP's sentence-label.csv."""
    data = config.data
    root = _data_root(data)
    source = _reports_source(config)
    if source.is_file():
        columns = _columns(source)
        if "Reports" in columns and all(label in columns for label in CHEXPERT_LABELS):
            return load_sentence_labels(source), True
        return load_reports(source), False
    if data.source != "mimic_cxr":
        return load_reports(source), False
    reports = list(dict.fromkeys(_report_path(path, root, source) for path in train.paths))
    found = [path for path in reports if path.is_file()]
    if not found:
        raise ValueError(
            f"{source}: none of the {len(reports)} reports of the training images' studies exist "
            f"(e.g. {str(reports[0])!r})"
        )
    return reports_to_pool((read_report(p) for p in tqdm(found, desc="MIMIC reports", leave=False)), source), False


def _reports_source(config: StudyConfig) -> Path:
    """``data.reports_root``, else MedCLIP's sentence-label.csv in a medclip_csv root, else ``data.root``."""
    data = config.data
    root = _data_root(data)
    default = root / SENTENCE_LABELS if data.source == "medclip_csv" and root.is_dir() else root
    return Path(data.reports_root) if data.reports_root is not None else default


def _training_reports(config: StudyConfig, train: FileImageSet) -> list[str | None]:
    """Each training image's raw report, in ``train``'s order, for ``text_sampling: own_report`` (None where it has
    none): MIMIC-CXR's study report (``files/pXX/pSUBJECT/sSTUDY.txt`` under ``reports_root`` when that is a folder,
    else under ``root``); the ``report`` column of MedCLIP's meta-CSVs; none for CheXpert."""
    data = config.data
    root = _data_root(data)
    if data.source == "mimic_cxr":
        source = _reports_source(config)
        folder = source if source.is_dir() else root
        paths = [_report_path(path, root, folder) for path in train.paths]
        if not any(path.is_file() for path in paths):
            raise FieldError(
                f"config.train.text_sampling: own_report pairs each image with its study's report, but "
                f"none of the training images' reports exist under {folder} (e.g. {str(paths[0])!r})"
            )
        texts = {
            path: read_report(path)
            for path in tqdm(sorted(set(paths)), desc="MIMIC reports", leave=False)
            if path.is_file()
        }
        return [texts.get(path) for path in paths]
    if data.source == "medclip_csv":
        metas = sorted(root.glob(TRAIN_META)) if root.is_dir() else [root]
        found: dict[Path, str] = {}
        for meta in metas:
            if "report" not in _columns(meta):
                continue
            image_root = Path(data.image_root) if data.image_root is not None else meta.parent
            for i, row in enumerate(read_table(meta, ["imgpath", "report"])[1], 1):
                report = (row.get("report") or "").strip()
                if report:
                    found[resolve_path(row["imgpath"], image_root, meta, i, "imgpath")] = report
        return [found.get(path) for path in train.paths]
    return [None] * len(train)


def _report_path(image: Path, root: Path, reports_root: Path) -> Path:
    """MIMIC-CXR's report of a MIMIC-CXR-JPG image (``files/pXX/pSUBJECT/sSTUDY/x.jpg``): under ``reports_root``,
    ``files/pXX/pSUBJECT/sSTUDY.txt``."""
    study = image.parent.relative_to(root)
    return reports_root / study.parent / f"{study.name}.txt"


def _capped_texts(pool: TextPool, n: int | None, seed: int) -> TextPool:
    """``pool`` with a seeded subset of at most ``n`` of its sentences (order kept)."""
    if n is None or len(pool) <= n:
        return pool
    return pool.subset(np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False)))


# ---------------------------------------------------------------------------------------------- the model
def build_base_estimator(config: StudyConfig, prompts: dict[str, list[str]], seed: int) -> MedCLIPEstimator:
    """The study's base model over ``prompts``: the checkpoint's weights, or a fresh ``variant`` seeded by ``seed``
    (the tiny one exactly as the built-in study has always built it)."""
    model = config.model
    assert model.image_size is not None  # StudyConfig resolves it
    shape = (1, model.image_size, model.image_size)
    settings: dict[str, Any] = {
        "device": config.device,
        "ensemble": config.evaluation.ensemble,
        "decision": config.evaluation.decision,
        "num_workers": config.data.num_workers,
    }
    overrides: dict[str, Any] = {} if model.logit_scale_max is None else {"logit_scale_max": model.logit_scale_max}
    if model.checkpoint is not None:
        network = load_medclip(model.checkpoint, model.variant)
        network.config = replace(network.config, **overrides)
        return MedCLIPEstimator(network, load_tokenizer(_tokenizer_dir(model)), prompts, input_shape=shape, **settings)
    tokenizer = None if model.tokenizer is None else load_tokenizer(model.tokenizer)
    if model.variant == "tiny":
        return MedCLIPEstimator.tiny(
            prompts, image_size=model.image_size, seed=seed, tokenizer=tokenizer, model_overrides=overrides, **settings
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_medclip(model.variant, **overrides)
    return MedCLIPEstimator(network, tokenizer, prompts, input_shape=shape, **settings)


def _tokenizer_dir(model: ModelConfig) -> Path:
    """``model.tokenizer``, else the checkpoint's folder."""
    if model.tokenizer is not None:
        return Path(model.tokenizer)
    assert model.checkpoint is not None  # only asked for a checkpoint's model
    checkpoint = Path(model.checkpoint)
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


# ---------------------------------------------------------------------------------------------- config-time checks
def check_inputs(config: StudyConfig) -> None:
    """A FieldError naming the field (``config.data.root: ...``) when a path of the config is missing or does not look
    like its source, or the checkpoint or tokenizer does not fit the model variant. Reads headers, not tables."""
    data = config.data
    if data.source != "phantom":
        with blame("config.data.root"):
            _check_data_root(data.source, _data_root(data))
        with blame("config.data.reports_root"):
            _check_reports(data.source, _data_root(data), data.reports_root)
        _check_folder(data.image_root, "config.data.image_root")
    for i, spec in enumerate(config.tasks):
        with blame(f"config.tasks[{i}].root"):
            _check_task_root(spec.source, _task_root(spec))
        _check_folder(spec.image_root, f"config.tasks[{i}].image_root")
    _check_model(config.model)


def _columns(path: Path) -> list[str]:
    """The header of a CSV (.csv or .csv.gz)."""
    try:
        with open_text(path) as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read CSV file {str(path)!r}: {exc}") from exc


def _require_columns(path: Path, columns: Sequence[str], what: str) -> None:
    """A ValueError naming the columns the CSV at ``path`` lacks of ``columns``."""
    have = _columns(path)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{path} does not look like {what}: it lacks column(s) {missing}")


def _existing(path: Path) -> Path:
    """``path``, or a ValueError when it does not exist."""
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    return path


def _check_folder(path: str | None, field: str) -> None:
    """A FieldError naming ``field`` when ``path`` is given and is no folder."""
    if path is not None and not Path(path).is_dir():
        raise FieldError(f"{field}: {path} is not a folder")


def _check_mimic(root: Path) -> None:
    """A MIMIC-CXR-JPG folder: the split and CheXpert-label tables and the files/ image tree."""
    try:
        find_table(root, SPLIT_TABLE)
        find_table(root, CHEXPERT_TABLE)
    except ValueError as exc:
        raise ValueError(f"{root} does not look like MIMIC-CXR-JPG: {exc}") from exc
    if not (root / "files").is_dir():
        raise ValueError(f"{root} does not look like MIMIC-CXR-JPG: it has no files/ folder of images")


def _check_chexpert(root: Path, frontal: bool) -> None:
    """A CheXpert folder with its train.csv (Path, the 14 labels, and for 5x200 Frontal/Lateral)."""
    csv_path = root / CHEXPERT_CSV
    if not csv_path.is_file():
        raise ValueError(f"{root} does not look like CheXpert: it has no {CHEXPERT_CSV}")
    _require_columns(csv_path, ["Path", *(["Frontal/Lateral"] if frontal else []), *CHEXPERT_LABELS], "CheXpert")


def _check_data_root(source: str, root: Path) -> None:
    """``data.root``: the source's folder, or (chexpert, medclip_csv) its image list."""
    if _existing(root).is_file():
        if source == "mimic_cxr":
            raise ValueError(f"{root} is a file; the mimic_cxr source needs the MIMIC-CXR-JPG folder")
        _require_columns(
            root, ["Path" if source == "chexpert" else "imgpath", *CHEXPERT_LABELS], f"a {source} image list"
        )
    elif source == "mimic_cxr":
        _check_mimic(root)
    elif source == "chexpert":
        _check_chexpert(root, frontal=False)
    else:
        metas = sorted(root.glob(TRAIN_META))
        if not metas:
            raise ValueError(f"{root} does not look like MedCLIP's data folder: it has no {TRAIN_META} file")
        for meta in metas:
            _require_columns(meta, ["imgpath", *CHEXPERT_LABELS], "a MedCLIP training meta-CSV")


def _check_reports(source: str, root: Path, reports_root: str | None) -> None:
    """``data.reports_root`` (default: ``root``, or MedCLIP's sentence-label.csv in it): for MIMIC-CXR a reports tree
    or a file."""
    if reports_root is None:
        if source == "medclip_csv" and root.is_dir() and not (root / SENTENCE_LABELS).is_file():
            raise ValueError(f"none given and {root} has no {SENTENCE_LABELS}")
        path = root
    else:
        path = _existing(Path(reports_root))
    if source == "mimic_cxr" and path.is_dir() and not (path / "files").is_dir():
        raise ValueError(
            f"{path} does not look like MIMIC-CXR's reports: it has no files/ folder (files/pXX/pSUBJECT/sSTUDY.txt)"
        )


def _check_task_root(source: str, root: Path) -> None:
    """A task's ``root``: the dataset's folder, or a CSV with the columns its adapter reads."""
    if _existing(root).is_file():
        columns = _columns(root)
        if source == "rsna":
            if not ({"patientId", "Target"} <= set(columns) or {"imgpath", *RSNA_CLASSES} <= set(columns)):
                raise ValueError(
                    f"{root} does not look like RSNA labels: it needs columns patientId and Target "
                    f"({RSNA_LABELS}) or imgpath, Normal and Pneumonia (MedCLIP's meta-CSV); it has "
                    f"{columns}"
                )
        elif source == "covid":
            lower = {c.lower() for c in columns}
            if not lower & set(PATH_COLUMNS) or not ({"normal", "covid"} <= lower or lower & set(LABEL_COLUMNS)):
                raise ValueError(
                    f"{root} does not look like a COVID image list: it needs an image path column "
                    f"{list(PATH_COLUMNS)} and Normal/COVID or a class column {list(LABEL_COLUMNS)}; it "
                    f"has {columns}"
                )
        else:
            _require_columns(root, ["imgpath", *CHEXPERT_LABELS], "a MedCLIP 5x200 meta-CSV")
    elif source == "rsna":
        if not (root / RSNA_LABELS).is_file():
            raise ValueError(f"{root} does not look like RSNA Pneumonia: it has no {RSNA_LABELS}")
        _require_columns(root / RSNA_LABELS, ["patientId", "Target"], "RSNA labels")
    elif source == "covid":
        folders = {d.name.lower() for d in root.iterdir() if d.is_dir()}
        missing = [cls for cls, aliases in CLASS_ALIASES.items() if not folders & set(aliases)]
        if missing:
            raise ValueError(
                f"{root} does not look like a COVID-19 class-folder tree: no folder for class(es) "
                f"{missing} (looked for {[a for cls in missing for a in CLASS_ALIASES[cls]]}, any case)"
            )
    elif source == "mimic_cxr":
        _check_mimic(root)
    else:
        _check_chexpert(root, frontal=True)


def _check_model(model: ModelConfig) -> None:
    """The checkpoint loads into the variant (keys and shapes); the tokenizer loads and its ids fit the model's word
    embeddings."""
    vocab_size = None
    if model.checkpoint is not None:
        with blame("config.model.checkpoint"):
            network = load_medclip(model.checkpoint, model.variant)
        vocab_size = network.config.text.vocab_size
    elif model.variant != "tiny":
        vocab_size = PRESETS[model.variant].text.vocab_size
    if model.checkpoint is None and model.tokenizer is None:
        return
    field = "config.model.tokenizer"
    directory = _tokenizer_dir(model)
    if model.tokenizer is None and not (directory / "vocab.txt").is_file():
        raise FieldError(
            f"{field}: none given and the checkpoint's folder {directory} holds no vocab.txt; give the "
            "folder of the text encoder's tokenizer"
        )
    with blame(field):
        tokenizer = load_tokenizer(directory)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise FieldError(
            f"{field}: {directory} has {len(tokenizer)} tokens but the {model.variant} model's word "
            f"embeddings hold {vocab_size}; it is not this model's tokenizer"
        )
