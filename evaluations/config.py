"""The study configuration: one dataclass tree (YAML-loadable) that says what the harness runs.

Unknown keys and bad values raise a ``ValueError`` naming the field (``config.train.lr must be a number, got
'abc'``), so a typo in a YAML file never silently falls back to a default. Every field is converted to its declared
type when the config is built (``artmed.validation.check_fields``: "1e-3" -> 0.001, "160" -> 160; NaN, bools as
numbers and fractions as integers refused); ``check_runnable`` checks the defense plugins and the output folder
before any work.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from artmed.attacks.pipeline import ATTACKS, AttackSpec
from artmed.defenses import registry
from artmed.validation import FieldError, blame, check_fields, check_names, check_writable


ART_DATA_ARGUMENTS = ("classifier", "x_train", "y_train")
"""Constructor arguments of the detectors' ART interface: data, never study parameters (the harness passes a context)."""


@dataclass
class DataConfig:
    """The built-in phantom data: sizes and resolution (the default study's data). ``n_shadow`` clean images are the
    BadDist attacker's shadow set and the defender's clean set (1024 rather than 256 costs no training time and keeps
    BadDist's clean cosine on held-out images higher: 0.944 vs 0.874 measured with a Fourier trigger, seed 0)."""

    n_train: int = 2000
    n_test: int = 200
    n_shadow: int = 1024
    image_size: int = 64
    n_texts: int | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("n_train", "n_test", "n_shadow", "image_size", "n_texts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class TrainConfig:
    """Unpaired MedCLIP training: steps, batch size and optimiser settings (passed to ``estimator.fit``)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self)
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
        return {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "warmup": self.warmup}


@dataclass
class DefenseSpec:
    """One defense to run: its registered name, constructor parameters, and the attack settings it runs on
    (``attacks``: names from ``artmed.attacks.pipeline.ATTACKS``; None = every one)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    attacks: list[str] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        unknown = sorted(set(self.attacks or ()) - set(ATTACKS))
        if unknown:
            raise FieldError(f"attacks must name settings in {list(ATTACKS)}, got {unknown!r} (defense {self.name!r})")

    def runs_on(self, attack: str) -> bool:
        return self.attacks is None or attack in self.attacks


@dataclass
class StudyConfig:
    """The whole study: data, the clean pre-training of the base model, the attacked trainings, the defenses.

    Every attack runs once per seed in ``seeds`` (default: ``[seed]``), each an independent replicate: its own data
    draw, base model, poison subset, trigger reference and BadDist; an attack spec's own ``seed`` is replaced by it.
    """

    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    task: str = "rsna_like"
    output_dir: str = "artmed-output"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150))
    attacks: list[AttackSpec] = field(default_factory=lambda: [AttackSpec("clean")])
    defenses: list[DefenseSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fields(self)
        for name, value in [("seed", self.seed)] + [(f"seeds[{i}]", v) for i, v in enumerate(self.seeds)]:
            if value < 0:
                raise FieldError(f"{name} must be a non-negative integer, got {value!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds listed twice: {sorted({s for s in self.seeds if self.seeds.count(s) > 1})}")
        keys = [a.key for a in self.attacks]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"attacks listed twice: {duplicates}")
        names = [d.name for d in self.defenses]
        if len(set(names)) != len(names):
            raise ValueError(f"defenses listed twice: {sorted({n for n in names if names.count(n) > 1})}")

    def check_runnable(self) -> None:
        """What building the config cannot check, for ``Harness.__init__`` to run before any work: every defense is
        installed, loads, is an ``artmed.defenses.Defense`` and is built from its ``params`` (its own checks run); the
        output folder can be written. A ValueError naming the field otherwise."""
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

    @property
    def seed_list(self) -> list[int]:
        """The replicate seeds: ``seeds``, or ``[seed]`` when none are listed."""
        return list(self.seeds) or [self.seed]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StudyConfig:
        """Build from plain data (e.g. parsed YAML); unknown keys raise a ValueError naming them."""
        return _build(cls, raw, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudyConfig:
        """Load a YAML study config; an empty file is refused (it would silently run the default study)."""
        path = Path(path)
        try:
            raw = yaml.load(path.read_text(), Loader=_Loader)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read study config {path}: {exc}") from exc
        if raw is None:
            raise ValueError(f"study config {path} is empty")
        if not isinstance(raw, dict):
            raise ValueError(f"study config {path} must be a mapping, got {type(raw).__name__}")
        return cls.from_dict(raw)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-3``) as YAML 1.2 does: PyYAML (YAML 1.1)
    leaves them strings, so a learning rate in a defense's ``params`` would reach the defense as text."""


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))

_NESTED = {"data": DataConfig, "pretrain": TrainConfig, "train": TrainConfig}
_LISTS = {"attacks": AttackSpec, "defenses": DefenseSpec}


def _build(cls: type, raw: Any, where: str) -> Any:
    if isinstance(raw, str) and cls is DefenseSpec:
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(known)}")
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
