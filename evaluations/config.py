"""The study configuration: one dataclass tree (YAML-loadable) that says what the harness runs.

Unknown keys and bad values raise a ``ValueError`` naming the field (``config.train.lr must be a number, got
'abc'``), so a typo in a YAML file never silently falls back to a default. Every field is converted to its declared
type when the config is built (``artmed.validation.check_fields``: "1e-3" -> 0.001, "160" -> 160; NaN, bools as
numbers and fractions as integers refused); ``check_runnable`` checks the defense plugins, the output folder and the
files the study reads (data and task folders, checkpoint, tokenizer; ``artmed.evaluations.sources``) before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from artmed.attacks.pipeline import SHORTHANDS, AttackSpec
from artmed.constants import IMAGE_SIZE
from artmed.data.tasks import TASK_NAMES
from artmed.defenses import registry
from artmed.device import resolve_device
from artmed.estimator import DECISIONS
from artmed.evaluations.preflight import check_config
from artmed.evaluations.protocol import PROTOCOLS, apply_protocol
from artmed.evaluations.sources import check_inputs
from artmed.evaluations.store import to_jsonable
from artmed.prompts import check_ensemble
from artmed.suggest import did_you_mean_each
from artmed.validation import FieldError, blame, check_fields, check_names, check_writable

ART_DATA_ARGUMENTS = ("classifier", "x_train", "y_train")
"""Constructor arguments of the detectors' ART interface: data, never study parameters (the harness passes a
context)."""


DATA_SOURCES: tuple[str, ...] = ("phantom", "mimic_cxr", "chexpert", "medclip_csv")
"""Where the training images and the text pool come from: the built-in phantoms or a user's copy of a dataset."""
TASK_SOURCES: tuple[str, ...] = ("rsna", "covid", "mimic_cxr", "chexpert")
"""Zero-shot tasks from real data: RSNA (Normal/Pneumonia), COVID (Normal/COVID), MIMIC- and CheXpert-5x200."""
MODEL_VARIANTS: tuple[str, ...] = ("tiny", "resnet50", "swin_tiny")
FILE_OPTIONS: dict[str, tuple[str, ...]] = {"interpolation": ("bicubic", "bilinear"), "pad": ("square", "no_upscale")}
"""``DataConfig``'s image-file options, the default first (``artmed.data.dataset.preprocess_image``)."""
PHANTOM_SIZES: dict[str, int] = {"n_train": 2000, "n_test": 200, "image_size": 64}
"""The phantom source's ``n_train`` / ``n_test`` / ``image_size`` when none are given (for a real source, no
``n_train`` / ``n_test`` means every image, and the image size is MedCLIP's 224)."""


@dataclass
class DataConfig:
    """The training data: its ``source`` (``DATA_SOURCES``), sizes and resolution. The default is the built-in phantom
    data (the default study's). A real source reads ``root`` (lazily, image by image) and report sentences from
    ``reports_root`` (default ``root``); relative image paths in its CSVs resolve against ``image_root``.

    ``n_train`` / ``n_test`` cap a seeded subset of the training images / of each task's test images (phantom: how many
    are generated, default 2000 / 200; real data: none = all). ``n_shadow`` clean images, drawn from the training images
    before the ``n_train``, are the BadDist attacker's shadow set and the defender's clean set (1024 rather than 256
    costs no training time and keeps BadDist's clean cosine on held-out images higher: 0.944 vs 0.874 measured with a
    Fourier trigger, seed 0). ``n_texts`` caps the text pool's sentences. ``image_size`` is the side the images are
    generated at (phantom, default 64) or resized to (real data, default 224); it is ``config.model.image_size`` too
    (give either).

    Real data only (the phantom refuses them): ``interpolation`` ("bicubic", default, or "bilinear", the released
    ``transforms.Resize``) and ``pad`` ("square", default: pad to max(h, w) and resize; "no_upscale": pad to
    max(image_size, h, w) as MedCLIP does) for every image file the study reads (training, shadow, task test images;
    ``FileImageSet``). ``native_trigger`` (default False): a patch trigger is pasted on the native image file, as the
    released code does, instead of on the resized array: BadMatch's poisoned training images after the padding to
    square (stage "padded"), the triggered test images before it (stage "raw"); the trigger's ``size``/``inset`` are
    then native pixels, and ``native_size`` is refused. Other triggers and BadDist's shadow images keep the array
    path.

    ``num_workers`` (default 0): processes that read and preprocess image batches ahead of training and feature
    extraction (``artmed.loader``; the batch order is fixed first, so results do not depend on it)."""

    n_train: int | None = None
    n_test: int | None = None
    n_shadow: int = 1024
    image_size: int | None = None
    n_texts: int | None = None
    source: str = "phantom"
    root: str | None = None
    reports_root: str | None = None
    image_root: str | None = None
    interpolation: str = "bicubic"
    pad: str = "square"
    native_trigger: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.num_workers < 0:
            raise FieldError(f"num_workers must be a non-negative integer, got {self.num_workers!r}")
        if self.source not in DATA_SOURCES:
            raise FieldError(f"source: unknown data source {self.source!r}; valid: {list(DATA_SOURCES)}")
        for name, choices in FILE_OPTIONS.items():
            if getattr(self, name) not in choices:
                raise FieldError(f"{name}: unknown {name} {getattr(self, name)!r}; valid: {list(choices)}")
        if self.source == "phantom":
            for name, default in PHANTOM_SIZES.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
            for name in ("root", "reports_root", "image_root"):
                if getattr(self, name) is not None:
                    raise FieldError(
                        f"{name}: the phantom source reads no files; set source to one of "
                        f"{list(DATA_SOURCES[1:])} to read {getattr(self, name)!r}"
                    )
            for name, choices in FILE_OPTIONS.items():
                if getattr(self, name) != choices[0]:
                    raise FieldError(
                        f"{name}: the phantom source generates its images at their size, so there is no "
                        f"file to resize ({name}: {getattr(self, name)!r} is for a real source)"
                    )
            if self.native_trigger:
                raise FieldError(
                    "native_trigger: the phantom source has no native image files; it emulates the "
                    "released native-resolution patch with the trigger's native_size "
                    "(trigger_params: {native_size: 1024}) instead"
                )
        elif self.root is None:
            raise FieldError(f"root: the {self.source} source needs the folder of its data")
        if self.source == "chexpert" and self.reports_root is None:
            raise FieldError(
                "reports_root: CheXpert ships no reports; give MedCLIP's sentence-label.csv, a CSV of "
                "reports or a folder of .txt reports for the text pool"
            )
        if self.source == "mimic_cxr" and self.image_root is not None:
            raise FieldError(
                "image_root: MIMIC-CXR-JPG images are found under root/files; image_root is for CSV "
                "sources (chexpert, medclip_csv)"
            )
        for name in ("n_train", "n_test", "n_shadow", "image_size", "n_texts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ModelConfig:
    """The base model: a ``variant`` (``MODEL_VARIANTS``) trained from scratch by the ``pretrain`` step, or released
    weights from ``checkpoint`` (a folder holding ``pytorch_model.bin`` or ``*.safetensors``, or the file), which are
    the base model as they are (no pretraining). ``tokenizer``: a folder with the text encoder's ``vocab.txt``
    (default: the checkpoint's folder; the built-in vocabulary for a ``tiny`` model from scratch). ``image_size``: the
    model's input side, the same setting as ``config.data.image_size`` (give either). ``logit_scale_max``: the cap on
    the learnt logit scale (default the model's, ln 100; released 4.6052)."""

    variant: str = "tiny"
    checkpoint: str | None = None
    tokenizer: str | None = None
    image_size: int | None = None
    logit_scale_max: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.variant not in MODEL_VARIANTS:
            raise FieldError(f"variant: unknown model variant {self.variant!r}; valid: {list(MODEL_VARIANTS)}")
        if self.image_size is not None and self.image_size < 1:
            raise FieldError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.logit_scale_max is not None and not 0 < self.logit_scale_max < float("inf"):
            raise FieldError(f"logit_scale_max must be a positive number, got {self.logit_scale_max!r}")
        if self.variant != "tiny" and self.checkpoint is None and self.tokenizer is None:
            raise FieldError(
                f"tokenizer: a {self.variant} model trained from scratch needs the folder of the "
                "Bio_ClinicalBERT tokenizer (vocab.txt)"
            )


@dataclass
class TaskSpec:
    """One zero-shot evaluation set: its ``name`` (a key of the result's ``tasks``), its ``source``
    (``TASK_SOURCES``) and ``root``: the dataset's folder or a CSV listing its images (RSNA:
    ``stage_2_train_labels.csv`` or MedCLIP's ``rsna-test-meta.csv``; COVID: a class-folder tree or a CSV; 5x200:
    MedCLIP's ``*-5x200-meta.csv``).
    A ``mimic_cxr`` / ``chexpert`` task without a root uses ``config.data.root`` when the data comes from that source.
    ``image_root``: what relative image paths in a CSV resolve against (default: the CSV's folder)."""

    name: str
    source: str
    root: str | None = None
    image_root: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.name.strip():
            raise FieldError("name must not be empty")
        if self.source not in TASK_SOURCES:
            raise FieldError(f"source: unknown task source {self.source!r}; valid: {list(TASK_SOURCES)}")
        if self.root is None and self.source not in ("mimic_cxr", "chexpert"):
            raise FieldError(f"root: the {self.source} task needs the folder (or CSV) of its images")


TEXT_SAMPLING: tuple[str, ...] = ("pool", "own_report")


@dataclass
class TrainConfig:
    """Unpaired MedCLIP training: steps, batch size and optimiser settings (passed to ``estimator.fit``).
    ``schedule_epochs``: the warm-up + cosine schedule spans that many epochs of the training set instead of the
    ``steps`` run (the released trainer's 10; the run may stop mid-schedule). ``eda``: the released EDA text
    augmentation, the loss the mean of the plain and the augmented batch's (``artmed.data.eda``). ``text_sampling``:
    "pool" (default: each step draws an independent batch of the text pool's sentences) or "own_report" (each image is
    paired with a sentence of its own report, ``artmed.data.report_sampling.ReportSampler``: MIMIC-CXR's report files,
    the ``report`` column of MedCLIP's meta-CSVs; an image without one, every phantom and CheXpert image included, gets
    the released label-matched fallback sentence from the text pool)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1
    schedule_epochs: int | None = None
    eda: bool = False
    text_sampling: str = "pool"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.text_sampling not in TEXT_SAMPLING:
            raise FieldError(
                f"text_sampling: unknown text sampling {self.text_sampling!r}; valid: {list(TEXT_SAMPLING)}"
            )
        if self.schedule_epochs is not None and self.schedule_epochs < 1:
            raise FieldError(f"schedule_epochs must be a positive integer, got {self.schedule_epochs!r}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise FieldError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise FieldError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise FieldError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.warmup < 1.0:
            raise FieldError(f"warmup must be a share in [0, 1), got {self.warmup!r}")

    def fit_params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup": self.warmup,
            "schedule_epochs": self.schedule_epochs,
            "eda": self.eda,
        }


PROMPT_SOURCES: tuple[str, ...] = ("artmed", "medclip")


@dataclass
class EvaluationConfig:
    """How the zero-shot tasks are scored. ``prompts``: "artmed" (each task's built-in phrases) or "medclip"
    (MedCLIP's template prompts, ``n_prompts`` per class drawn from ``prompt_seed``, the normal class from the text
    pool's No-Finding-only sentences, as the released ``zero_shot.py``), scored over ``prompt_draws`` seeded draws
    (released: 5): the metrics are the means over draws and ``<metric>_draw_std`` their spread; the models and the
    defenses use the first draw. ``ensemble``: a class's logit is the ``mean`` (released evaluation) or ``max``
    (MedCLIP's ``PromptClassifier`` default) over its prompts. ``decision``: how logits become a class for CA/ASR
    (``artmed.estimator.DECISIONS``: ``argmax``, or ``released_sigmoid`` as the released evaluator)."""

    prompts: str = "artmed"
    prompt_draws: int = 1
    n_prompts: int = 10
    prompt_seed: int = 42
    ensemble: str = "mean"
    decision: str = "argmax"

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prompts not in PROMPT_SOURCES:
            raise FieldError(f"prompts: unknown prompt source {self.prompts!r}; valid: {list(PROMPT_SOURCES)}")
        for name in ("prompt_draws", "n_prompts"):
            if getattr(self, name) < 1:
                raise FieldError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.prompt_seed < 0:
            raise FieldError(f"prompt_seed must be a non-negative integer, got {self.prompt_seed!r}")
        if self.prompts == "artmed" and self.prompt_draws != 1:
            raise FieldError(
                f"prompt_draws: the built-in prompts are fixed, so only one draw exists (got "
                f"{self.prompt_draws}); set prompts: medclip to sample MedCLIP's"
            )
        with blame("ensemble"):
            check_ensemble(self.ensemble)
        if self.decision not in DECISIONS:
            raise FieldError(f"decision: unknown decision rule {self.decision!r}; valid: {list(DECISIONS)}")


@dataclass
class DefenseSpec:
    """One defense to run: its registered name, constructor parameters, and the attacks it runs on (``attacks``: the
    shorthands of ``artmed.attacks.pipeline.SHORTHANDS`` or the labels of the study's attacks; None = every one)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    attacks: list[str] | None = None

    def __post_init__(self) -> None:
        check_fields(self)

    def runs_on(self, attack: str | None) -> bool:
        return self.attacks is None or attack in self.attacks


@dataclass
class StudyConfig:
    """The whole study: data, the base model and its clean pre-training, the zero-shot tasks, the attacked trainings,
    the defenses.

    Every attack runs once per seed in ``seeds`` (default: ``[seed]``), each an independent replicate: its own data
    draw, base model, poison subset, trigger reference and BadDist; an attack spec's own ``seed`` is replaced by it.
    ``tasks`` are the zero-shot evaluation sets (none: the phantom data's built-in three); ``task`` names the headline
    one, whose metrics are the record's top level (default: the first of ``tasks``, or "rsna_like").
    ``protocol``: "artmed" (the defaults) or "released", which fills every setting the config does not give with the
    authors' released value (``artmed.evaluations.protocol``).
    """

    protocol: str = "artmed"
    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    task: str | None = None
    output_dir: str = "artmed-output"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: list[TaskSpec] = field(default_factory=list)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150))
    attacks: list[AttackSpec] = field(default_factory=lambda: [AttackSpec("clean")])
    defenses: list[DefenseSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.protocol not in PROTOCOLS:
            raise FieldError(f"protocol: unknown protocol {self.protocol!r}; valid: {list(PROTOCOLS)}")
        self._resolve_image_size()
        self._resolve_tasks()
        for name, value in [("seed", self.seed)] + [(f"seeds[{i}]", v) for i, v in enumerate(self.seeds)]:
            if value < 0:
                raise FieldError(f"{name} must be a non-negative integer, got {value!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds listed twice: {sorted({s for s in self.seeds if self.seeds.count(s) > 1})}")
        if self.data.native_trigger:
            for i, spec in enumerate(self.attacks):
                if spec.trigger == "patch" and spec.trigger_params.get("native_size") is not None:
                    raise FieldError(
                        f"attacks[{i}].trigger_params.native_size: data.native_trigger pastes the "
                        "patch on the native image file, in native pixels; native_size (the emulation on "
                        "resized arrays) does not apply, remove it"
                    )
        identities = [_identity(a) for a in self.attacks]
        duplicates = [
            f"attacks[{identities.index(i)}] = attacks[{n}] ({a.key})"
            for n, (a, i) in enumerate(zip(self.attacks, identities))
            if identities.index(i) < n
        ]
        if duplicates:
            raise ValueError(
                f"attacks listed twice (the same settings; the study's seeds replace an attack's own "
                f"seed): {', '.join(duplicates)}"
            )
        by_key: dict[str, set[str]] = {}
        for spec, identity in zip(self.attacks, identities):
            by_key.setdefault(dataclasses.replace(spec, seed=0).key, set()).add(identity)
        self._shared_keys = {i for ids in by_key.values() if len(ids) > 1 for i in ids}
        labels = [*SHORTHANDS, *(a.attack for a in self.attacks if a.attack not in SHORTHANDS)]
        for i, defense in enumerate(self.defenses):
            unknown = sorted(set(defense.attacks or ()) - set(labels))
            if unknown:
                raise FieldError(
                    f"defenses[{i}].attacks must name settings in {labels}, got {unknown!r} (defense {defense.name!r})"
                )
        names = [d.name for d in self.defenses]
        if len(set(names)) != len(names):
            raise ValueError(f"defenses listed twice: {sorted({n for n in names if names.count(n) > 1})}")

    def check_runnable(self) -> None:
        """What building the config cannot check, for ``Harness.__init__`` to run before any work: every defense is
        installed, loads, is an ``artmed.defenses.Defense`` and is built from its ``params`` (its own checks run); the
        output folder can be written; the ``device`` exists here (``cuda`` without a GPU is refused); the data, task,
        checkpoint and tokenizer paths exist and look like what their field names (``artmed.evaluations.sources.
        check_inputs``). A ValueError naming the field otherwise."""
        for i, spec in enumerate(self.defenses):
            where = f"config.defenses[{i}]"
            try:
                cls = registry.get(spec.name)
            except (ImportError, TypeError, ValueError) as exc:
                raise ValueError(f"{where}: {exc}") from exc
            check_names(cls, spec.params, f"{where}.params", spec.name, fixed=ART_DATA_ARGUMENTS)
            with blame(f"{where}.params"):
                cls(**spec.params)
        check_writable(self.output_dir, "config.output_dir", folder=True)
        with blame("config.device"):
            resolve_device(self.device)  # "cuda" on a machine without one is refused here, not cell by cell
        check_config(self)  # what would fail, or score nothing, only after training (artmed.evaluations.preflight)
        check_inputs(self)

    def _resolve_image_size(self) -> None:
        """One side for the images and the model's input: ``model.image_size`` or ``data.image_size`` (which must agree
        when both are given; the phantom source's is always given), else MedCLIP's 224."""
        model, data = self.model.image_size, self.data.image_size
        if model is not None and data is not None and model != data:
            raise FieldError(
                f"model.image_size ({model}) differs from data.image_size ({data}), the side the images "
                "are read at; give one of them"
            )
        self.model.image_size = self.data.image_size = model or data or IMAGE_SIZE

    def _resolve_tasks(self) -> None:
        """The headline ``task``: the phantom data's "rsna_like" by default, else the first of ``tasks``; a
        ``mimic_cxr`` / ``chexpert`` task without a root reads ``data.root``."""
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise FieldError(f"tasks: names listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        if not self.tasks:
            if self.data.source != "phantom":
                raise FieldError(
                    f"tasks: the {self.data.source} source needs at least one zero-shot task, e.g. "
                    f"{{name: rsna, source: rsna, root: /path/to/rsna}}"
                )
            names = list(TASK_NAMES)
        self.task = self.task if self.task is not None else names[0]
        if self.task not in names:
            raise FieldError(f"task: unknown task {self.task!r}; available: {names}")
        for i, task in enumerate(self.tasks):
            if task.root is None:
                if task.source != self.data.source:
                    raise FieldError(
                        f"tasks[{i}].root: the {task.source} task needs the folder of its data "
                        f"(config.data.source is {self.data.source!r}, so data.root is no default)"
                    )
                task.root = self.data.root

    def attack_key(self, spec: AttackSpec) -> str:
        """The name of ``spec``'s cells and model folder: ``spec.key``, with a digest of its settings appended when
        another listed attack has the same ``spec.key`` but other settings (those ``spec.key`` leaves out: ``target``,
        the trigger's, BadDist's, BadMatch's parameters), so such attacks never share a cell; an attack no other one
        collides with keeps ``spec.key`` (existing output folders keep their names)."""
        identity = _identity(spec)
        if identity not in self._shared_keys:
            return spec.key
        return f"{spec.key}-{hashlib.sha1(identity.encode('utf-8')).hexdigest()[:8]}"

    @property
    def seed_list(self) -> list[int]:
        """The replicate seeds: ``seeds``, or ``[seed]`` when none are listed."""
        return list(self.seeds) or [self.seed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudyConfig:
        """Build from plain data (e.g. parsed YAML), its ``protocol``'s values filled in where ``raw`` gives none;
        unknown keys raise a ValueError naming them."""
        if not isinstance(raw, dict):
            raise ValueError(f"config must be a mapping, got {type(raw).__name__}")
        return _build(cls, apply_protocol(raw), "config")

    def with_protocol(self, protocol: str) -> StudyConfig:
        """A copy under ``protocol``, whose values replace this config's own (``artmed run --protocol`` on a built-in
        study); "artmed" only renames the protocol."""
        return StudyConfig.from_dict(apply_protocol({**self.to_dict(), "protocol": protocol}, force=True))

    @classmethod
    def from_yaml(cls, path: str | Path, protocol: str | None = None) -> StudyConfig:
        """Load a YAML study config (under ``protocol`` when given, else the file's); an empty file is refused (it
        would silently run the default study)."""
        raw = read_config_file(path)
        return cls.from_dict(raw if protocol is None else {**raw, "protocol": protocol})


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping (exponent floats read as numbers, a repeated key refused); an unreadable, empty
    or non-mapping file is a ValueError naming it."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read study config {path}: {exc}") from exc
    if raw is None:
        raise ValueError(f"study config {path} is empty")
    if not isinstance(raw, dict):
        raise ValueError(f"study config {path} must be a mapping, got {type(raw).__name__}")
    return raw


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-3``) as YAML 1.2 does: PyYAML (YAML 1.1)
    leaves them strings, so a learning rate in a defense's ``params`` would reach the defense as text. A key given
    twice in one mapping is an error naming it and its lines (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first != line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"key {key!r} given twice (lines {first} and {line})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))


def _identity(spec: AttackSpec) -> str:
    """Every setting of ``spec`` but its seed (the study's seeds replace it), as canonical JSON."""
    return json.dumps(to_jsonable({**spec.settings(), "seed": None}), sort_keys=True)


_NESTED = {
    "data": DataConfig,
    "model": ModelConfig,
    "evaluation": EvaluationConfig,
    "pretrain": TrainConfig,
    "train": TrainConfig,
}
_LISTS = {"attacks": AttackSpec, "defenses": DefenseSpec, "tasks": TaskSpec}


def _build(cls: type, raw: Any, where: str) -> Any:
    if isinstance(raw, str) and cls is DefenseSpec:
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        hint = did_you_mean_each(unknown, known)
        raise ValueError(f"{where}: unknown key(s) {unknown}{hint}; valid: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if cls is StudyConfig and key in _NESTED:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        elif cls is StudyConfig and key in _LISTS:
            if not isinstance(value, list):
                raise ValueError(f"{where}.{key} must be a list, got {type(value).__name__}")
            value = [_build(_LISTS[key], item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise exc.under(where) from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
