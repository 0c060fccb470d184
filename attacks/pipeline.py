"""The seed paper's four settings, one spec away each: clean, BadMatch, BadDist, BadDist-assisted BadMatch.

The victim trains MedCLIP *unpaired* on (possibly poisoned) images and an untouched text pool, starting from a
base model. BadDist is the supply-chain step: the attacker fine-tunes the base vision encoder on a shadow set
before the victim's training; BadMatch is the data step: triggered, relabelled training images.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from artmed.attacks.poisoning.bad_dist import BadDist, encoder_cosines, resolve_baddist_params
from artmed.attacks.poisoning.bad_match import BadMatch
from artmed.attacks.triggers import TRIGGERS, Trigger, make_trigger
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import ImageSet
from artmed.validation import FieldError, blame, check_fields, check_names

ATTACKS: tuple[str, ...] = ("clean", "badmatch", "baddist", "baddist_badmatch")


@dataclass
class AttackSpec:
    """What to run: the attack setting, its trigger, poison rate, target, seed, BadDist hyper-parameters and BadMatch's
    other parameters (``badmatch_params``, e.g. ``{candidates: released}``)."""

    attack: str = "clean"
    trigger: str = "patch"
    trigger_params: dict[str, Any] = field(default_factory=dict)
    percent_poison: float = 0.01
    target: str = "No Finding"
    seed: int = 0
    baddist_params: dict[str, Any] = field(default_factory=dict)
    badmatch_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every field converted to its type and checked, the trigger built and the BadDist parameters checked
        (``FieldError`` naming the field): a bad spec fails here, not after the base model's training."""
        check_fields(self)
        if self.attack not in ATTACKS:
            raise FieldError(f"attack: unknown attack {self.attack!r}; valid: {list(ATTACKS)}")
        if self.target not in CHEXPERT_LABELS:
            raise FieldError(f"target: unknown target class {self.target!r}; valid: {list(CHEXPERT_LABELS)}")
        if self.uses_badmatch and not 0.0 < self.percent_poison <= 1.0:
            raise FieldError(f"percent_poison must be in (0, 1], got {self.percent_poison!r}")
        if self.seed < 0:
            raise FieldError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.trigger not in TRIGGERS:
            raise FieldError(f"trigger: unknown trigger {self.trigger!r}; valid: {sorted(TRIGGERS)}")
        check_names(TRIGGERS[self.trigger], self.trigger_params, "trigger_params", f"trigger {self.trigger!r}")
        with blame("trigger_params"):
            trigger = self.build_trigger()
        with blame("baddist_params"):
            params = resolve_baddist_params(self.baddist_params)
        check_names(BadDist, params, "baddist_params", "BadDist", fixed=("estimator", "trigger", "seed"))
        check_names(BadMatch, self.badmatch_params, "badmatch_params", "BadMatch",
                    fixed=("trigger", "target", "percent_poison", "seed"))
        if self.uses_badmatch:
            with blame("badmatch_params"):
                BadMatch(trigger, target=self.target, percent_poison=self.percent_poison, seed=self.seed,
                         **self.badmatch_params)
        # BadDist is built on an estimator, which a spec does not have: its own checks run on the parameters alone
        bound = inspect.signature(BadDist).bind(None, trigger, seed=self.seed, **params)
        bound.apply_defaults()
        with blame("baddist_params"):
            BadDist._check_params(SimpleNamespace(**bound.arguments))

    @property
    def uses_badmatch(self) -> bool:
        return self.attack in ("badmatch", "baddist_badmatch")

    @property
    def uses_baddist(self) -> bool:
        return self.attack in ("baddist", "baddist_badmatch")

    @property
    def key(self) -> str:
        """A short, file-name-safe identifier of this setting."""
        if self.attack == "clean":
            return f"clean-s{self.seed}"
        rate = f"-p{self.percent_poison:g}" if self.uses_badmatch else ""
        return f"{self.attack}-{self.trigger}{rate}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build_trigger(self) -> Trigger:
        """The trigger; a seeded one (Fourier reference, blended pattern) draws from ``seed`` unless its params say."""
        params = dict(self.trigger_params)
        if self.trigger in TRIGGERS and "seed" in inspect.signature(TRIGGERS[self.trigger]).parameters:
            params.setdefault("seed", self.seed)
        return make_trigger(self.trigger, **params)


@dataclass
class AttackOutcome:
    """The victim's trained estimator, the training set it saw and the ground truth of which rows are poisoned."""

    spec: AttackSpec
    estimator: Any
    x_train: np.ndarray | ImageSet
    y_train: np.ndarray
    poison_mask: np.ndarray
    trigger: Trigger
    history: dict[str, Any]


def poison_training_set(spec: AttackSpec, x: np.ndarray | ImageSet, y: np.ndarray,
                        trigger: Trigger | None = None,
                        native: str | None = None) -> tuple[np.ndarray | ImageSet, np.ndarray, np.ndarray]:
    """The victim's training set under ``spec``: BadMatch-poisoned (seeded, so rebuilt exactly) or ``x, y`` as given.
    An ImageSet ``x`` (whose labels are ``y``) stays lazy: the chosen images are triggered as they are read.
    ``native`` (default None) triggers them on the native image files of a ``FileImageSet`` at that stage
    ("padded": the released training set; ``BadMatch.poison_imageset``).

    Returns ``(x, y, poison_mask)``.
    """
    if not spec.uses_badmatch:
        return x, y, np.zeros(len(x), dtype=bool)
    trigger = trigger if trigger is not None else spec.build_trigger()
    bad_match = BadMatch(trigger, target=spec.target, percent_poison=spec.percent_poison, seed=spec.seed,
                         **spec.badmatch_params)
    if isinstance(x, ImageSet):
        poisoned = bad_match.poison_imageset(x) if native is None else bad_match.poison_imageset(x, native=native)
        return poisoned, poisoned.labels, bad_match.poison_mask_
    x_poisoned, y_poisoned = bad_match.poison(x, y)
    return x_poisoned, y_poisoned, bad_match.poison_mask_


def supply_chain_attack(spec: AttackSpec, base_estimator: Any, x_shadow: np.ndarray,
                        x_probe: np.ndarray | None = None, verbose: bool = True) -> tuple[Any, dict[str, Any]]:
    """BadDist under ``spec`` on a copy of ``base_estimator``: ``(backdoored estimator, history)``.

    ``history["baddist"]`` is BadDist's per-step record; with ``x_probe`` (held-out clean images),
    ``history["baddist_probe"]`` holds the backdoored encoder's mean cosines to the base encoder (``encoder_cosines``).
    """
    trigger = spec.build_trigger()
    params = {"verbose": verbose, **resolve_baddist_params(spec.baddist_params)}
    bad_dist = BadDist(base_estimator.clone(), trigger, seed=spec.seed, **params)
    backdoored = bad_dist.poison_estimator(x_shadow)
    history: dict[str, Any] = {"baddist": bad_dist.history_}
    if x_probe is not None:
        history["baddist_probe"] = encoder_cosines(backdoored, base_estimator, x_probe, trigger)
    return backdoored, history


def run_attack(spec: AttackSpec, base_estimator: Any, x: np.ndarray | ImageSet, y: np.ndarray, texts: list[str],
               text_labels: np.ndarray, fit_params: dict[str, Any] | None = None,
               x_shadow: np.ndarray | ImageSet | None = None, keep: np.ndarray | None = None,
               x_probe: np.ndarray | None = None,
               supplied: tuple[Any, dict[str, Any]] | None = None,
               poisoned: tuple[np.ndarray | ImageSet, np.ndarray, np.ndarray] | None = None) -> AttackOutcome:
    """Run one setting from ``base_estimator`` (left untouched) and return the victim's trained model.

    ``x_shadow`` is the attacker's clean shadow set for BadDist (default: a seeded quarter of ``x``, at most 512);
    ``x_probe`` goes to ``supply_chain_attack``. ``supplied`` is a finished ``supply_chain_attack`` result for this
    spec (BadDist is then not run again: two settings sharing a seed and trigger share the backdoored encoder).
    ``poisoned`` is a finished ``poison_training_set`` result for this spec (not rebuilt). ``keep`` (a boolean row
    mask) drops rows of the poisoned training set before training — a defender's filter (and the same rows of a
    ``report_sampler`` in ``fit_params``). ``x`` may be an ImageSet (read lazily; its subsets stay ImageSets).
    """
    trigger = spec.build_trigger()
    history: dict[str, Any] = {}
    if spec.uses_baddist:
        if supplied is None:
            if x_shadow is None:
                rng = np.random.default_rng(spec.seed)
                rows = np.sort(rng.choice(len(x), size=min(512, max(1, len(x) // 4)), replace=False))
                x_shadow = x.subset(rows) if isinstance(x, ImageSet) else x[rows]
            supplied = supply_chain_attack(spec, base_estimator, x_shadow, x_probe,
                                           verbose=(fit_params or {}).get("verbose", True))
        backdoored, bd_history = supplied
        estimator = backdoored.clone()
        history.update(bd_history)
    else:
        estimator = base_estimator.clone()
    x_train, y_train, poison_mask = poisoned if poisoned is not None else poison_training_set(spec, x, y, trigger)
    if keep is not None:
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(x),):
            raise ValueError(f"keep must be a boolean mask of shape ({len(x)},), got {keep.dtype} {keep.shape}")
        x_train = x_train.subset(keep) if isinstance(x_train, ImageSet) else x_train[keep]
        y_train = y_train[keep]
    fit = {"seed": spec.seed, **(fit_params or {})}
    if keep is not None and fit.get("report_sampler") is not None:  # the sampler follows the kept rows
        fit["report_sampler"] = fit["report_sampler"].subset(keep)
    history["fit"] = estimator.fit(x_train, y_train, texts=texts, text_labels=text_labels, **fit)
    return AttackOutcome(spec, estimator, x_train, y_train, poison_mask, trigger, history)
