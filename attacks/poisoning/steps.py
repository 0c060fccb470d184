"""The seed paper's attacks as steps (``artmed.attacks.steps``): BadMatch a data step, BadDist a supply-chain step.

Each wraps its ART attack class in a few lines: the step keeps the class's own parameters, and builds the class in
``apply`` from them and the attack's shared settings (``AttackContext``: trigger, target, poison rate, seed).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from artmed.attacks.poisoning.bad_dist import BadDist, check_baddist_params, encoder_cosines, resolve_baddist_params
from artmed.attacks.poisoning.bad_match import CANDIDATE_RULES, BadMatch
from artmed.attacks.steps import AttackContext, DataStep, Images, Poisoned, SupplyChainStep
from artmed.data.dataset import ImageSet
from artmed.params import Choice
from artmed.validation import FieldError, check_names

_BADDIST_OWN = ("estimator", "trigger", "seed")
"""BadDist's arguments that the attack supplies (the model, the shared trigger and seed), not the step's params."""


class BadMatchStep(DataStep):
    """BadMatch: trigger a seeded ``percent_poison`` share of the training images and label them as the target."""

    name = "badmatch"
    param_rules = {"candidates": Choice(CANDIDATE_RULES)}

    def __init__(self, candidates: str = "not_target") -> None:
        self.candidates = candidates
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def _attack(self, context: AttackContext) -> BadMatch:
        return BadMatch(
            context.trigger,
            target=context.target,
            percent_poison=context.percent_poison,
            seed=context.seed,
            candidates=self.candidates,
        )

    def check(self, context: AttackContext) -> None:
        self._attack(context)

    def apply(self, x: Images, y: np.ndarray, context: AttackContext) -> Poisoned:
        """An ImageSet ``x`` stays lazy (the chosen images are triggered as they are read, on the native image files
        with ``context.native``); an array is poisoned in a copy."""
        bad_match = self._attack(context)
        if isinstance(x, ImageSet):
            poisoned = (
                bad_match.poison_imageset(x)
                if context.native is None
                else bad_match.poison_imageset(x, native=context.native)
            )
            return Poisoned(poisoned, poisoned.labels, bad_match.poison_mask_)
        x_poisoned, y_poisoned = bad_match.poison(x, y)
        return Poisoned(x_poisoned, y_poisoned, bad_match.poison_mask_)


class BadDistStep(SupplyChainStep):
    """BadDist: distil a backdoor into the vision encoder on the attacker's shadow images (``BadDist``).

    ``settings`` names a preset of ``BADDIST_SETTINGS`` ("paper", "tiny"); ``params`` are BadDist's own (lambda_clean,
    lambda_trigger, lr, momentum, weight_decay, epochs, steps, batch_size, device, init_noise, optimizer, schedule,
    verbose) and override the preset.
    """

    name = "baddist"
    uses: ClassVar[tuple[str, ...]] = ("trigger",)

    def __init__(self, settings: str | None = None, **params: Any) -> None:
        self.settings = settings
        self.params = params
        self._check_params()

    @classmethod
    def param_names(cls) -> list[str]:
        return ["settings", "params"]

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """``settings`` and BadDist's own parameters with their defaults (what ``artmed attacks`` lists)."""
        return {
            "settings": None,
            **{p.name: p.default for p in inspect.signature(BadDist).parameters.values() if p.name not in _BADDIST_OWN},
        }

    def _check_params(self) -> None:
        try:  # BadDist's own names, as a config's are checked: "unknown parameter 'lrr' (did you mean 'lr'?) ..."
            check_names(BadDist, self.params, "params", "BadDist", fixed=_BADDIST_OWN)
        except FieldError as exc:
            raise ValueError(str(exc).removeprefix("params: ")) from None
        check_baddist_params({**self.parameters(), **self.resolved(), "seed": 0})

    def resolved(self) -> dict[str, Any]:
        """BadDist's keyword arguments: the ``settings`` preset expanded, the other parameters on top of it."""
        given = {"settings": self.settings} if self.settings is not None else {}
        return resolve_baddist_params({**given, **self.params})

    def apply(self, estimator: Any, context: AttackContext) -> tuple[Any, dict[str, Any]]:
        """A backdoored copy of ``estimator`` trained on ``context.x_shadow``; the history holds BadDist's per-step
        record (``baddist``) and, with ``context.x_probe``, the encoder's mean cosines to ``estimator`` on those
        held-out images (``baddist_probe``)."""
        if context.x_shadow is None:
            raise ValueError("baddist needs the attacker's shadow images (context.x_shadow)")
        bad_dist = BadDist(
            estimator.clone(), context.trigger, seed=context.seed, **{"verbose": context.verbose, **self.resolved()}
        )
        backdoored = bad_dist.poison_estimator(context.x_shadow)
        history: dict[str, Any] = {"baddist": bad_dist.history_}
        if context.x_probe is not None:
            history["baddist_probe"] = encoder_cosines(backdoored, estimator, context.x_probe, context.trigger)
        return backdoored, history

    def summary(self, history: dict[str, Any]) -> dict[str, float]:
        """BadDist's separation: cosines to the base encoder at the last step (shadow batch) and on held-out images."""
        if "baddist" not in history:
            return {}
        fields = {
            "baddist_cos_clean": history["baddist"]["cos_clean"][-1],
            "baddist_cos_trigger": history["baddist"]["cos_trigger"][-1],
        }
        probe = history.get("baddist_probe") or {}
        fields.update({f"heldout_{k}": v for k, v in probe.items()})
        return fields
