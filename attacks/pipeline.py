"""An attack is an ordered list of steps (``artmed.attacks.steps``); the seed paper's four settings are shorthands.

The victim trains MedCLIP *unpaired* on (possibly poisoned) images and an untouched text pool, starting from a
base model. Supply-chain steps (BadDist: the attacker fine-tunes the base vision encoder on a shadow set) change the
model the victim starts from; data steps (BadMatch: triggered, relabelled training images) change its training set.
``clean``, ``badmatch``, ``baddist`` and ``baddist_badmatch`` name the compositions of those two steps
(``SHORTHANDS``); any other composition, plugins' steps included, is given as ``steps``.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import numpy as np

from artmed.attacks import registry
from artmed.attacks.registry import SHORTHANDS
from artmed.attacks.steps import (
    DATA,
    ESTIMATOR,
    SUPPLY_CHAIN,
    AttackContext,
    AttackStep,
    DataStep,
    Images,
    Poisoned,
    SupplyChainStep,
    check_output,
)
from artmed.attacks.triggers import TRIGGERS, Trigger, make_trigger
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import ImageSet
from artmed.suggest import did_you_mean
from artmed.validation import FieldError, blame, check_fields, check_names

SHORTHAND_PARAMS: dict[str, str] = {"baddist": "baddist_params", "badmatch": "badmatch_params"}
"""The AttackSpec field holding each built-in step's parameters when the attack is given by its shorthand."""

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")

StepCache = dict[str, Any]
"""Step outputs by ``AttackSpec.step_keys`` key: attacks sharing a step's inputs share its output."""


@dataclass
class AttackSpec:
    """What to run: the attack, its trigger, poison rate, target and seed (the settings its steps share), and its steps.

    ``attack`` is a shorthand of ``SHORTHANDS`` (its steps' parameters in ``baddist_params`` / ``badmatch_params``,
    e.g. ``{candidates: released}``), or, with ``steps`` given, the attack's label (default: the step names joined by
    "_", "clean" for none). ``steps`` lists the steps in order, each ``{name: <registered step>, params: {...}}`` or
    just its name.
    """

    attack: str | None = None
    trigger: str = "patch"
    trigger_params: dict[str, Any] = field(default_factory=dict)
    percent_poison: float = 0.01
    target: str = "No Finding"
    seed: int = 0
    baddist_params: dict[str, Any] = field(default_factory=dict)
    badmatch_params: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        """Every field converted to its type and checked, the trigger built and every step built from its parameters
        (``FieldError`` naming the field): a bad spec fails here, not after the base model's training."""
        if isinstance(self.steps, list):
            self.steps = [_step_entry(entry, i) for i, entry in enumerate(self.steps)]
        check_fields(self)
        self._composition = self._resolve()
        self._steps = [self._build(name, params, where) for name, params, where in self._composition]
        if self.target not in CHEXPERT_LABELS:
            raise FieldError(f"target: unknown target class {self.target!r}; valid: {list(CHEXPERT_LABELS)}")
        if self.uses("percent_poison") and not 0.0 < self.percent_poison <= 1.0:
            raise FieldError(f"percent_poison must be in (0, 1], got {self.percent_poison!r}")
        if self.seed < 0:
            raise FieldError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.trigger not in TRIGGERS:
            raise FieldError(
                f"trigger: unknown trigger {self.trigger!r}{did_you_mean(self.trigger, TRIGGERS)}; "
                f"valid: {sorted(TRIGGERS)}"
            )
        check_names(TRIGGERS[self.trigger], self.trigger_params, "trigger_params", f"trigger {self.trigger!r}")
        with blame("trigger_params"):
            context = self.context()
        for step, (_, _, where) in zip(self._steps, self._composition):
            with blame(where):
                step.check(context)
        if self.steps is None:  # a shorthand's unused parameters are checked too: a typo there is still a typo
            assert self.attack is not None  # _resolve filled it in
            for name, where in SHORTHAND_PARAMS.items():
                if name not in SHORTHANDS[self.attack]:
                    self._build(name, getattr(self, where), where)

    def _resolve(self) -> list[tuple[str, dict[str, Any], str]]:
        """The steps as (name, params, the field they come from), and ``attack`` filled in."""
        if self.steps is None:
            self.attack = "clean" if self.attack is None else self.attack
            if self.attack not in SHORTHANDS:
                raise FieldError(
                    f"attack: unknown attack {self.attack!r}{did_you_mean(self.attack, SHORTHANDS)}; "
                    f"valid: {list(SHORTHANDS)}, or give its "
                    "steps (steps: [{name: <step>, params: {...}}, ...])"
                )
            return [
                (name, getattr(self, SHORTHAND_PARAMS[name]), SHORTHAND_PARAMS[name])
                for name in SHORTHANDS[self.attack]
            ]
        for where in SHORTHAND_PARAMS.values():
            if getattr(self, where):
                raise FieldError(f"{where}: with steps given, put a step's parameters in its steps[i].params")
        names = tuple(entry["name"] for entry in self.steps)
        shorthand = next((name for name, steps in SHORTHANDS.items() if steps == names), None)
        if shorthand is not None and self.attack in (None, shorthand):  # one spelling per setting: its shorthand's
            for entry in self.steps:
                setattr(self, SHORTHAND_PARAMS[entry["name"]], entry["params"])
            self.attack, self.steps = shorthand, None
            return self._resolve()
        self.attack = ("_".join(names) or "clean") if self.attack is None else self.attack
        if not _LABEL.fullmatch(self.attack):
            raise FieldError(f"attack: the label {self.attack!r} must be letters, digits, '_' and '.' (it names files)")
        if self.attack in SHORTHANDS and names != SHORTHANDS[self.attack]:
            raise FieldError(
                f"attack: {self.attack!r} is the shorthand of steps {list(SHORTHANDS[self.attack])}, "
                f"not {list(names)}; give the attack another label"
            )
        return [(entry["name"], entry["params"], f"steps[{i}].params") for i, entry in enumerate(self.steps)]

    @staticmethod
    def _build(name: str, params: dict[str, Any], where: str) -> AttackStep:
        """The step registered as ``name`` built from ``params`` (``where``: the field they come from)."""
        with blame(where.removesuffix(".params") + ".name" if where.startswith("steps[") else where):
            cls = registry.get(name)
        check_names(cls, params, where, name)
        with blame(where):
            return cls(**params)

    @property
    def composition(self) -> list[AttackStep]:
        """The attack's steps, built, in order (none for a clean model)."""
        return list(self._steps)

    def uses(self, setting: str) -> bool:
        """True when a step of the attack depends on the shared ``setting`` (``AttackStep.uses``)."""
        return any(setting in step.uses for step in self._steps)

    def uses_kind(self, kind: str) -> bool:
        """True when the attack has a step of ``kind`` ("supply_chain" or "data")."""
        return any(step.kind == kind for step in self._steps)

    def step_keys(self) -> list[str]:
        """One cache key per step: the step and every earlier step of its kind (their names, parameters and the shared
        settings they use) and the seed; a step that uses ``ESTIMATOR`` also every supply-chain step (its model).
        Equal keys, equal outputs: two attacks share a step's result through it."""
        keys: list[str] = []
        chains: dict[str, list[dict[str, Any]]] = {SUPPLY_CHAIN: [], DATA: []}
        entries = []
        for step, (name, params, _) in zip(self._steps, self._composition):
            shared = {s: getattr(self, s) for s in step.uses if s != ESTIMATOR}
            if "trigger" in step.uses:
                shared["trigger_params"] = self.trigger_params
            entries.append({"step": name, "params": params, **shared})
        supplied = [entry for step, entry in zip(self._steps, entries) if step.kind == SUPPLY_CHAIN]
        for step, entry in zip(self._steps, entries):
            chains[step.kind].append({**entry, ESTIMATOR: supplied} if ESTIMATOR in step.uses else entry)
            keys.append(json.dumps({"seed": self.seed, "steps": chains[step.kind]}, sort_keys=True, default=str))
        return keys

    @property
    def key(self) -> str:
        """A short, file-name-safe identifier of this setting."""
        if not self._steps:
            return f"{self.attack}-s{self.seed}"
        rate = f"-p{self.percent_poison:g}" if self.uses("percent_poison") else ""
        return f"{self.attack}-{self.trigger}{rate}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> dict[str, Any]:
        """Every field, ``steps`` only when given: a shorthand's settings (recorded with its cells, and its identity
        in a study) are what they were before attacks had steps, so old output folders resume."""
        return {k: v for k, v in asdict(self).items() if not (k == "steps" and v is None)}

    def build_trigger(self) -> Trigger:
        """The trigger; a seeded one (Fourier reference, blended pattern) draws from ``seed`` unless its params say."""
        params = dict(self.trigger_params)
        if self.trigger in TRIGGERS and "seed" in inspect.signature(TRIGGERS[self.trigger]).parameters:
            params.setdefault("seed", self.seed)
        return make_trigger(self.trigger, **params)

    def context(self, **inputs: Any) -> AttackContext:
        """The settings the steps share, with ``inputs`` (``x_shadow``, ``y_shadow``, ``x_probe``, ``verbose``,
        ``native``; see ``AttackContext``)."""
        return AttackContext(
            trigger=self.build_trigger(),
            target=self.target,
            percent_poison=self.percent_poison,
            seed=self.seed,
            **inputs,
        )


def _step_entry(entry: Any, index: int) -> Any:
    """A ``steps`` item as ``{name, params}`` (a bare name allowed); other shapes are left to ``check_fields``."""
    where = f"steps[{index}]"
    if isinstance(entry, str):
        return {"name": entry, "params": {}}
    if not isinstance(entry, dict):
        return entry
    unknown = sorted(set(entry) - {"name", "params"})
    if unknown or not isinstance(entry.get("name"), str):
        raise FieldError(f"{where} must be a step name or {{name: <step>, params: {{...}}}}, got {entry!r}")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise FieldError(f"{where}.params must be a mapping, got {params!r}")
    return {"name": entry["name"], "params": dict(params)}


@dataclass
class AttackOutcome:
    """The victim's trained estimator, the training set it saw, the ground truth of which rows are poisoned and the
    trigger that activates the backdoor (a data step's own, ``Poisoned.trigger``, else the spec's)."""

    spec: AttackSpec
    estimator: Any
    x_train: np.ndarray | ImageSet
    y_train: np.ndarray
    poison_mask: np.ndarray
    trigger: Trigger
    history: dict[str, Any]


def supply_chain_attack(
    spec: AttackSpec, base_estimator: Any, context: AttackContext, cache: StepCache | None = None
) -> tuple[Any, dict[str, Any]]:
    """Every supply-chain step of ``spec`` in order from ``base_estimator`` (left untouched): ``(the estimator the
    victim starts from, the steps' merged history)``; a step whose key is in ``cache`` is not run again."""
    estimator = base_estimator
    history: dict[str, Any] = {}
    for step, key in zip(spec.composition, spec.step_keys()):
        if step.kind != SUPPLY_CHAIN:
            continue
        if cache is None or key not in cache:
            output = cast(SupplyChainStep, step).apply(estimator, context)  # by its kind
            check_output(step, output, 0)
            result = (output[0], {**history, **output[1]})
            if cache is None:
                estimator, history = result
                continue
            cache[key] = result
        estimator, history = cache[key]
    return estimator, history


def poison_training_set(
    spec: AttackSpec, x: Images, y: np.ndarray, context: AttackContext | None = None, cache: StepCache | None = None
) -> Poisoned:
    """The victim's training set under ``spec``: every data step in order (each seeded, so rebuilt exactly), or
    ``x, y`` as given; the mask marks the rows any step poisoned. An ImageSet ``x`` stays lazy. A step whose key is
    in ``cache`` is not run again. ``trigger``: the last trigger a step planted itself (None: the spec's)."""
    context = context if context is not None else spec.context()
    current = Poisoned(x, y, np.zeros(len(x), dtype=bool))
    for step, key in zip(spec.composition, spec.step_keys()):
        if step.kind != DATA:
            continue
        if cache is not None and key in cache:
            current = cache[key]
            continue
        if ESTIMATOR in step.uses and context.estimator is None:
            raise ValueError(
                f"attack step {step.name!r} needs the model the victim starts from (context.estimator); "
                "run it through run_attack, or pass a context with estimator set"
            )
        output = cast(DataStep, step).apply(current.x, current.y, context)  # by its kind
        check_output(step, output, len(current.x))
        mask = np.zeros(len(output.x), dtype=bool)
        mask[: len(current.mask)] = current.mask
        trigger = output.trigger if output.trigger is not None else current.trigger  # the last planted trigger wins
        current = Poisoned(output.x, output.y, mask | np.asarray(output.mask), trigger)
        if cache is not None:
            cache[key] = current
    return current


def default_shadow(spec: AttackSpec, x: Images) -> Images:
    """The attacker's shadow set when none is given: a seeded quarter of ``x``, at most 512 images."""
    rng = np.random.default_rng(spec.seed)
    rows = np.sort(rng.choice(len(x), size=min(512, max(1, len(x) // 4)), replace=False))
    return x.subset(rows) if isinstance(x, ImageSet) else x[rows]


def run_attack(
    spec: AttackSpec,
    base_estimator: Any,
    x: Images,
    y: np.ndarray,
    texts: list[str],
    text_labels: np.ndarray,
    fit_params: dict[str, Any] | None = None,
    context: AttackContext | None = None,
    keep: np.ndarray | None = None,
    cache: StepCache | None = None,
) -> AttackOutcome:
    """Run one attack from ``base_estimator`` (left untouched) and return the victim's trained model.

    ``context`` holds the shared settings and the attacker's data (default: ``spec.context()`` with a seeded quarter
    of ``x`` as the shadow set, ``default_shadow``). ``cache`` keeps each step's output under its key, for the next
    attack or retraining sharing it. ``keep`` (a boolean row mask over the poisoned training set) drops rows before
    training — a defender's filter (and the same rows of a ``report_sampler`` in ``fit_params``). ``x`` may be an
    ImageSet (read lazily; its subsets stay ImageSets).
    """
    if context is None:
        context = spec.context(
            x_shadow=default_shadow(spec, x) if spec.uses_kind(SUPPLY_CHAIN) else None,
            verbose=(fit_params or {}).get("verbose", True),
        )
    supplied, history = supply_chain_attack(spec, base_estimator, context, cache)
    estimator = supplied.clone()
    history = dict(history)
    context = replace(context, estimator=supplied)  # what a data step that uses ESTIMATOR attacks
    poisoned = poison_training_set(spec, x, y, context, cache)
    x_train, y_train = poisoned.x, poisoned.y
    if keep is not None:
        keep = np.asarray(keep)
        if keep.dtype != bool or keep.shape != (len(x_train),):
            raise ValueError(f"keep must be a boolean mask of shape ({len(x_train)},), got {keep.dtype} {keep.shape}")
        x_train = x_train.subset(keep) if isinstance(x_train, ImageSet) else x_train[keep]
        y_train = y_train[keep]
    fit = {"seed": spec.seed, **(fit_params or {})}
    if keep is not None and fit.get("report_sampler") is not None:  # the sampler follows the kept rows
        fit["report_sampler"] = fit["report_sampler"].subset(keep)
    history["fit"] = estimator.fit(x_train, y_train, texts=texts, text_labels=text_labels, **fit)
    trigger = poisoned.trigger if poisoned.trigger is not None else context.trigger
    return AttackOutcome(spec, estimator, x_train, y_train, poisoned.mask, trigger, history)
