"""Template artmed attack steps, one of each kind (``artmed.attacks.steps``); docs/plugins.md explains the contract.

``CleanLabel`` (a data step) triggers a seeded ``percent_poison`` share of the images already labelled as the target
and leaves every label as it is: a clean-label backdoor. ``WeightNoise`` (a supply-chain step) hands the victim a
copy of the model with seeded Gaussian noise on its vision encoder's weights.
"""

import numpy as np
import torch

from artmed.attacks.poisoning import PoisonedImageSet, target_vector
from artmed.attacks.steps import AttackContext, DataStep, Poisoned, SupplyChainStep
from artmed.data.dataset import ImageSet
from artmed.params import Choice, Real


class CleanLabel(DataStep):
    """Clean-label poisoning: trigger a seeded ``percent_poison`` share of the target-class images, labels unchanged."""

    name = "clean_label"
    uses = ("trigger", "target", "percent_poison")  # the shared settings its output depends on (its cache key)
    param_rules = {"match": Choice(("exact", "contains"))}

    def __init__(self, match: str = "exact") -> None:
        self.match = match
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def apply(self, x: np.ndarray | ImageSet, y: np.ndarray, context: AttackContext) -> Poisoned:
        target = target_vector(context.target)
        labels = np.asarray(y)
        if self.match == "exact":
            candidates = np.flatnonzero(np.all(labels == target, axis=1))
        else:
            candidates = np.flatnonzero(np.all(labels[:, target == 1] == 1, axis=1))
        n_poison = max(1, int(round(context.percent_poison * len(labels))))
        if n_poison > len(candidates):
            raise ValueError(
                f"clean_label: {n_poison} images to poison but only {len(candidates)} are labelled {context.target!r}"
            )
        chosen = np.sort(np.random.default_rng(context.seed).choice(candidates, size=n_poison, replace=False))
        mask = np.zeros(len(labels), dtype=bool)
        mask[chosen] = True
        if isinstance(x, ImageSet):  # lazy: the chosen images are triggered as they are read
            return Poisoned(PoisonedImageSet(x, chosen, context.trigger, target), np.array(labels, copy=True), mask)
        x_poisoned = x.copy()
        x_poisoned[chosen] = context.trigger(x[chosen])
        return Poisoned(x_poisoned, np.array(labels, copy=True), mask)


class WeightNoise(SupplyChainStep):
    """Add seeded Gaussian noise of relative scale ``sigma`` to every vision-encoder weight of a copy of the model."""

    name = "weight_noise"
    uses = ()  # depends on no shared setting but the seed
    param_rules = {"sigma": Real(0.0, 1.0, "(]")}

    def __init__(self, sigma: float = 0.01) -> None:
        self.sigma = sigma
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def apply(self, estimator, context: AttackContext):
        backdoored = estimator.clone()  # the estimator handed in is left untouched
        generator = torch.Generator().manual_seed(context.seed)
        with torch.no_grad():
            for parameter in backdoored.model.vision_model.parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter)
                parameter.add_(self.sigma * parameter.abs().mean() * noise)
        return backdoored, {"weight_noise": {"sigma": self.sigma}}

    def summary(self, history):
        """A column of the attacked model's record."""
        return {"weight_noise_sigma": history["weight_noise"]["sigma"]}
