"""The attack interface, the counterpart of ``artmed.defenses.Defense``: an attack is an ordered list of steps.

A step holds its own parameters (set in ``__init__``, checked in one ``_check_params``, as a defense's) and has one
verb, ``apply``. There are two kinds:

- ``SupplyChainStep`` (kind "supply_chain"): estimator -> estimator, before the victim trains (BadDist: the attacker
  hands out a backdoored encoder). It returns a new estimator and leaves the one it gets unchanged.
- ``DataStep`` (kind "data"): training images and labels -> poisoned images, labels and the ground-truth mask of the
  rows it poisoned (BadMatch).

Supply-chain steps run in their listed order on the base model, data steps in theirs on the victim's training set;
then the victim trains the last estimator on the last training set. What every step of one attack shares (the
trigger, the target class, the poison rate, the seed, the attacker's shadow images) comes in an ``AttackContext``;
a step names in ``uses`` which of the shared settings its result depends on (the harness caches a step's output
under exactly those, so two attacks sharing a step's inputs share its output). A data step that attacks the model the
victim starts from (BadCLIP optimises its patch on it) also names "estimator" (``ESTIMATOR``) and gets that model in
``AttackContext.estimator``; a data step that plants its own trigger (Carlini-Terzis's random-position patch,
BadCLIP's learned patch) returns it in ``Poisoned.trigger``, and the harness scores the attack and hands the defenses
triggered inputs with it in place of the spec's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np

from artmed.attacks.triggers import Trigger
from artmed.data.dataset import ImageSet
from artmed.params import Params

SUPPLY_CHAIN = "supply_chain"
DATA = "data"
STEP_KINDS: tuple[str, ...] = (SUPPLY_CHAIN, DATA)
SHARED_SETTINGS: tuple[str, ...] = ("trigger", "target", "percent_poison")
"""The attack-level settings a step may depend on (``AttackStep.uses``); the seed is always one."""
ESTIMATOR = "estimator"
"""What a data step names in ``uses`` to get the model the victim starts from (``AttackContext.estimator``)."""

Images = np.ndarray | ImageSet


@dataclass(frozen=True)
class AttackContext:
    """What the steps of one attack share: its trigger, target class name, poison rate and seed (``AttackSpec``),
    the attacker's clean shadow images (``x_shadow``, ``y_shadow``: what a supply-chain step trains on), held-out
    clean images for diagnostics (``x_probe``, may be None), whether to print progress, and ``native``: for a data
    step on a file-backed ``FileImageSet``, the stage at which to paste the trigger on the native image files
    ("padded": the released training set), None to trigger the resized images. ``estimator``: the model the victim
    starts from (the base model after the supply-chain steps), set for the data steps that name ``ESTIMATOR`` in
    ``uses``; None before the supply-chain steps ran."""

    trigger: Trigger
    target: str
    percent_poison: float
    seed: int
    x_shadow: Images | None = None
    y_shadow: np.ndarray | None = None
    x_probe: np.ndarray | None = None
    verbose: bool = True
    native: str | None = None
    estimator: Any = None


class Poisoned(NamedTuple):
    """A data step's output: the training images (an ImageSet stays lazy), their labels (N, 14) and the mask of the
    rows the step poisoned (N,). Rows keep their order; a step that adds rows appends them. ``trigger``: the trigger
    the step planted when it is its own (not ``AttackContext.trigger``): the harness triggers test images with it."""

    x: Images
    y: np.ndarray
    mask: np.ndarray
    trigger: Trigger | None = None


class AttackStep(Params, ABC):
    """One step of an attack: parameters in ``__init__`` (checked by ``_check_params``), one verb ``apply``.

    ``uses`` lists the shared settings (``SHARED_SETTINGS``) the step's result depends on, and ``ESTIMATOR`` for a
    data step that needs the model the victim starts from; ``check(context)`` may refuse parameters that only fail
    together with them (run when a study config is built, before any training).
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["supply_chain", "data"]]
    uses: ClassVar[tuple[str, ...]] = SHARED_SETTINGS

    @abstractmethod
    def _check_params(self) -> None:
        """Raise ValueError naming the first invalid parameter."""

    def check(self, context: AttackContext) -> None:
        """Refuse (ValueError) parameters that do not fit the attack's shared settings; by default nothing."""

    def summary(self, history: dict[str, Any]) -> dict[str, float]:
        """Scalar columns for the attacked model's record from the attack's history; by default none."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class SupplyChainStep(AttackStep):
    """A step on the model the victim starts from: ``apply(estimator, context)`` -> ``(new estimator, history)``."""

    kind: ClassVar[Literal["supply_chain"]] = "supply_chain"

    @abstractmethod
    def apply(self, estimator: Any, context: AttackContext) -> tuple[Any, dict[str, Any]]:
        """A backdoored copy of ``estimator`` (left unchanged) and a history to merge into the attack's record."""


class DataStep(AttackStep):
    """A step on the victim's training set: ``apply(x, y, context)`` -> ``Poisoned``."""

    kind: ClassVar[Literal["data"]] = "data"

    @abstractmethod
    def apply(self, x: Images, y: np.ndarray, context: AttackContext) -> Poisoned:
        """The poisoned training set and the mask of the rows this step poisoned."""


def check_output(step: AttackStep, output: Any, n_rows: int) -> None:
    """Refuse a step's output that breaks its contract (a TypeError / ValueError naming the step)."""
    if step.kind == SUPPLY_CHAIN:
        if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], dict)):
            raise TypeError(
                f"attack step {step.name!r}: apply() must return (estimator, history dict), got {type(output).__name__}"
            )
        return
    if not isinstance(output, Poisoned):
        raise TypeError(f"attack step {step.name!r}: apply() must return a Poisoned, got {type(output).__name__}")
    if output.trigger is not None and not isinstance(output.trigger, Trigger):
        raise TypeError(
            f"attack step {step.name!r}: Poisoned.trigger must be an artmed.attacks.triggers.Trigger or "
            f"None, got {type(output.trigger).__name__}"
        )
    mask = np.asarray(output.mask)
    if mask.dtype != bool or mask.shape != (len(output.x),) or len(output.y) != len(output.x):
        raise ValueError(
            f"attack step {step.name!r}: returned {len(output.x)} images, {len(output.y)} labels and a "
            f"{mask.dtype} mask of shape {mask.shape}; they must agree (a boolean mask per image)"
        )
    if len(output.x) < n_rows:
        raise ValueError(
            f"attack step {step.name!r}: returned {len(output.x)} rows of {n_rows}; a data step keeps "
            "every row it gets (appending is allowed)"
        )
