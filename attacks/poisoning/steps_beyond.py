"""The attacks beyond the seed paper as steps (``artmed.attacks.steps``): BadEncoder a supply-chain step, Carlini-Terzis
and BadCLIP data steps that plant their own trigger (``Poisoned.trigger``; the harness scores with it).

Each wraps its ART attack class (docs/attacks_beyond.md) as ``artmed.attacks.poisoning.steps`` wraps BadMatch and
BadDist: the step keeps the class's own parameters and builds the class in ``apply`` from them and the attack's shared
settings (``AttackContext``).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import numpy as np

from artmed.attacks.poisoning.bad_encoder import BADENCODER_SETTINGS, BadEncoder
from artmed.attacks.poisoning.badclip import BadCLIP
from artmed.attacks.poisoning.carlini_terzis import CarliniTerzis, RandomPositionPatch
from artmed.attacks.steps import ESTIMATOR, AttackContext, DataStep, Images, Poisoned, SupplyChainStep
from artmed.constants import IMAGE_SIZE
from artmed.data.dataset import ImageSet
from artmed.params import Int, OrNone, Params, Real, check
from artmed.validation import FieldError, check_names

_BADENCODER_OWN = ("estimator", "trigger", "target", "seed", "reference")
"""BadEncoder's arguments the attack supplies (model, shared trigger, target, seed) or a study cannot give (arrays)."""
_BADCLIP_OWN = ("estimator", "target", "percent_poison", "seed")
"""BadCLIP's arguments the attack supplies (the model the victim starts from and the shared settings)."""


def _own_params(cls: type[Params], params: dict[str, Any], fixed: tuple[str, ...], step: str) -> None:
    """Refuse a parameter ``cls`` does not take, one the attack supplies, or a value its ``param_rules`` refuse
    (ValueError naming the parameter, and the step for a wrong name), before any training."""
    try:
        check_names(cls, params, "params", f"{cls.__name__} (attack step {step!r})", fixed=fixed)
    except FieldError as exc:
        raise ValueError(str(exc).removeprefix("params: ")) from None
    for name, value in params.items():
        if name in cls.param_rules:
            check(cls, name, value, cls.param_rules[name])


def _array(x: Images) -> np.ndarray:
    """The training images as one array (a lazy ImageSet read whole: these attacks poison arrays)."""
    return x.to_array() if isinstance(x, ImageSet) else x


class BadEncoderStep(SupplyChainStep):
    """BadEncoder: fine-tune the vision encoder so triggered shadow images embed like target-class references.

    ``settings`` names a preset of ``BADENCODER_SETTINGS`` ("paper", "tiny"); ``params`` are BadEncoder's own
    (n_reference, lambda1, lambda2, lr, momentum, weight_decay, optimizer, epochs, steps, batch_size, augment, device,
    verbose) and override the preset. The references are shadow images labelled exactly as the target.
    """

    name = "badencoder"
    uses: ClassVar[tuple[str, ...]] = ("trigger", "target")

    def __init__(self, settings: str | None = None, **params: Any) -> None:
        self.settings = settings
        self.params = params
        self._check_params()

    @classmethod
    def param_names(cls) -> list[str]:
        return ["settings", "params"]

    def _check_params(self) -> None:
        if self.settings is not None and self.settings not in BADENCODER_SETTINGS:
            raise ValueError(
                f"settings: unknown BadEncoder settings {self.settings!r}; valid: {sorted(BADENCODER_SETTINGS)}"
            )
        _own_params(BadEncoder, self.params, _BADENCODER_OWN, self.name)

    def resolved(self) -> dict[str, Any]:
        """BadEncoder's keyword arguments: the ``settings`` preset, the other parameters on top of it."""
        return {**(BADENCODER_SETTINGS[self.settings] if self.settings is not None else {}), **self.params}

    def _attack(self, estimator: Any, context: AttackContext) -> BadEncoder:
        return BadEncoder(
            estimator,
            context.trigger,
            target=context.target,
            seed=context.seed,
            **{"verbose": context.verbose, **self.resolved()},
        )

    def apply(self, estimator: Any, context: AttackContext) -> tuple[Any, dict[str, Any]]:
        """A backdoored copy of ``estimator`` trained on ``context.x_shadow`` / ``y_shadow``; the history holds
        BadEncoder's per-step record (``badencoder``)."""
        if context.x_shadow is None or context.y_shadow is None:
            raise ValueError(f"{self.name} needs the attacker's shadow images and labels (context.x_shadow, y_shadow)")
        attack = self._attack(estimator, context)
        return attack.poison_estimator(context.x_shadow, context.y_shadow), {"badencoder": attack.history_}

    def summary(self, history: dict[str, Any]) -> dict[str, float]:
        """BadEncoder's last-step cosines: triggered image to reference, and clean embedding to the clean encoder."""
        if "badencoder" not in history:
            return {}
        return {
            "badencoder_cos_trigger_reference": history["badencoder"]["cos_trigger_reference"][-1],
            "badencoder_cos_clean": history["badencoder"]["cos_clean"][-1],
        }


class CarliniTerzisStep(DataStep):
    """Carlini-Terzis: a noise patch at a random position on a seeded handful of training images (any label), labelled
    as the target; plants its own trigger (``RandomPositionPatch``, the spec's ``trigger`` is not used).

    ``num_poison`` images when given, else the attack's ``percent_poison`` share; ``size`` (pixels) or
    ``relative_size`` (of the image width) sets the patch side.
    """

    name = "carlini_terzis"
    uses: ClassVar[tuple[str, ...]] = ("target", "percent_poison")
    param_rules = {
        "num_poison": OrNone(Int(1), text="a positive integer or None"),
        "size": OrNone(Int(1), text="a positive integer or None"),
        "relative_size": Real(0.0, 1.0, "(]", text="in (0, 1]"),
    }

    def __init__(
        self, num_poison: int | None = None, size: int | None = None, relative_size: float = 16 / IMAGE_SIZE
    ) -> None:
        self.num_poison = num_poison
        self.size = size
        self.relative_size = relative_size
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def _attack(self, context: AttackContext) -> CarliniTerzis:
        trigger = RandomPositionPatch(size=self.size, relative_size=self.relative_size, seed=context.seed)
        return CarliniTerzis(
            trigger,
            target=context.target,
            num_poison=self.num_poison,
            percent_poison=context.percent_poison,
            seed=context.seed,
        )

    def check(self, context: AttackContext) -> None:
        self._attack(context)

    def apply(self, x: Images, y: np.ndarray, context: AttackContext) -> Poisoned:
        """Copies of ``x`` (an ImageSet read whole) and ``y`` with the chosen rows patched and relabelled."""
        attack = self._attack(context)
        x_poisoned, y_poisoned = attack.poison(_array(x), y)
        trigger = cast(RandomPositionPatch, attack.trigger_)  # the one _attack gave it
        return Poisoned(x_poisoned, y_poisoned, attack.poison_mask_, trigger)


class BadCLIPStep(DataStep):
    """BadCLIP: optimise a middle patch on the model the victim starts from (``AttackContext.estimator``) towards the
    target's class prompts, then patch a seeded ``percent_poison`` share of the training images and label them as the
    target; plants that learned patch as its trigger (``MiddlePatch``, the spec's ``trigger`` is not used).

    ``params`` are BadCLIP's own (patch_size, relative_size, lambda_visual, margin, lr, epochs, steps, batch_size,
    verbose). The patch is optimised on the training set the step gets (its images not labelled as the target).
    """

    name = "badclip"
    uses: ClassVar[tuple[str, ...]] = ("target", "percent_poison", ESTIMATOR)

    def __init__(self, **params: Any) -> None:
        self.params = params
        self._check_params()

    @classmethod
    def param_names(cls) -> list[str]:
        return ["params"]

    def _check_params(self) -> None:
        _own_params(BadCLIP, self.params, _BADCLIP_OWN, self.name)

    def apply(self, x: Images, y: np.ndarray, context: AttackContext) -> Poisoned:
        """Copies of ``x`` (an ImageSet read whole) and ``y`` with the chosen rows patched and relabelled; the patch is
        optimised on a copy of ``context.estimator`` (left unchanged)."""
        if context.estimator is None:
            raise ValueError(f"{self.name} needs the model the victim starts from (context.estimator)")
        attack = BadCLIP(
            context.estimator.clone(),
            target=context.target,
            percent_poison=context.percent_poison,
            seed=context.seed,
            **{"verbose": context.verbose, **self.params},
        )
        x_poisoned, y_poisoned = attack.poison(_array(x), y)
        return Poisoned(x_poisoned, y_poisoned, attack.poison_mask_, attack.trigger_)
