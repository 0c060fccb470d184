"""Fine-pruning (Liu et al., 2018) for MedCLIP: prune the vision encoder's least active last-stage channels, then
fine-tune on clean unpaired data with the MedCLIP loss.

The authors' release (kangliucn/Fine-pruning-defense, Caffe, ``face``/``speech`` ``conv_output_prune.py``) ranks the
channels of the last convolutional layer by their mean activation on clean images (the layer's output after ReLU and
pooling), zeroes the filter and bias of a fixed number of the least active ones (48 of 60 = 80 % for the face
model, 250 of 256 for speech) with no accuracy-based stopping, and fine-tunes the pruned network with those filters
removed. SCLBD/BackdoorBench ``defense/fp.py`` is a re-implementation, not the release: it prunes in 1 % steps until
clean accuracy falls 10 % (relative) and masks the columns of the classifier's first linear layer.

In MedCLIP the last convolutional stage of the ResNet feeds global average pooling and then the projection ``fc``;
the Swin has no convolution after its patch embedding, so its fallback "channels" are the features of the last stage
after the final layer norm, mean-pooled into ``projection_head`` (as BackdoorBench does for ViT and ConvNeXt). In both,
a channel is pruned by zeroing its column of the projection: the embedding then equals that of the network whose
channel output is held at zero (what the release's zeroed filter and bias give after ReLU), exactly, in the forward
and backward pass; it is kept by ``save``/``clone`` and held at zero during fine-tuning by masking that column's
gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from artmed.defenses.base import Defense, EvaluationContext, MitigationResult, load_images
from artmed.models.vision import ResNetVisionEncoder, SwinVisionEncoder
from artmed.params import Choice, Int, Real

PRUNE_RULES = ("fixed", "tolerance")
"""``fixed``: the release's fixed share of channels; ``tolerance``: artmed's accuracy-guided steps."""

RANKINGS = ("mean", "mean_abs")
"""Channel statistic: the release's mean activation, or artmed's mean absolute activation (same on a ResNet)."""


def last_stage_parts(model: nn.Module) -> tuple[nn.Linear, tuple[int, ...]]:
    """The projection whose input columns are the last-stage channels, and the axes to average activations over
    ((0, 2, 3) for a ResNet's (B, C, h, w) map, (0, 1) for a Swin's (B, L, C) tokens)."""
    vision = getattr(model, "vision_model", None)
    if isinstance(vision, ResNetVisionEncoder):
        return vision.model.fc, (0, 2, 3)
    if isinstance(vision, SwinVisionEncoder):
        return vision.projection_head, (0, 1)
    raise ValueError(f"fine-pruning supports ResNet and Swin MedCLIP vision encoders, got {type(vision).__name__}")


def rank_channels(activations: Iterable[np.ndarray], axes: tuple[int, ...], ranking: str = "mean") -> np.ndarray:
    """Channel indices from least to most active over batches of last-stage activations (channels on the axis not
    in `axes`): by summed activation (``"mean"``, the release's ``argsort`` of the mean) or summed absolute activation
    (``"mean_abs"``). Ties keep channel order (a stable sort; the release's quicksort leaves their order open)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    total = None
    for acts in activations:
        values = np.abs(acts) if ranking == "mean_abs" else np.asarray(acts)
        part = values.astype(np.float64).sum(axis=axes)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("rank_channels needs at least one batch of activations")
    return np.argsort(total, kind="stable")


def pruned_count(share: float, n_channels: int) -> int:
    """How many of `n_channels` a pruned `share` removes (nearest integer: 0.8 of the release's 60 is its 48)."""
    return int(round(share * n_channels))


class FinePruning(Defense):
    """Prune the least active last-stage channels, then fine-tune `finetune_steps` steps on ``context.x_clean``
    with the MedCLIP loss.

    ``prune_rule="fixed"`` (default, the authors' release) prunes the `prune_ratio` least active channels (0.8: the
    release's 48 of 60) whatever the accuracy; it gets there in steps of `prune_step` only so that each step's model
    can be scored (the end point is the release's one-shot cut). ``prune_rule="tolerance"`` is artmed's variant:
    steps of `prune_step` (up to `max_prune`) until validation accuracy falls more than `tolerance` below the unpruned
    model's, that last step undone.

    ``ranking="mean"`` (default, the release) ranks channels by mean activation on the validation images;
    ``"mean_abs"`` (artmed's variant) by mean absolute activation: identical on the ResNet's post-ReLU map, different
    on the Swin's layer-normed features. Validation is a seeded `val_share` of the clean held-out set
    (``x_test``/``test_targets``). The release ships no fine-tuning configuration (its Caffe solvers train the
    networks from scratch), so fine-tuning is MedCLIP's own unpaired ``fit`` at `lr`. The history records the
    validation accuracy of every step; each step's model also goes to ``context.report`` (the harness scores it).
    Works on a clone; the context's estimator is untouched. ``prune_rule="tolerance", ranking="mean_abs"`` reproduces
    artmed 0.x's fine-pruning exactly.
    """

    name = "fine_pruning"
    kind = "mitigation"
    param_rules = {
        "prune_rule": Choice(PRUNE_RULES),
        "prune_ratio": Real(0.0, 1.0, "()"),
        "ranking": Choice(RANKINGS),
        "prune_step": Real(0.0, 1.0, "(]"),
        "max_prune": Real(0.0, 1.0, "()", text="a number in [prune_step, 1)"),
        "tolerance": Real(0.0, 1.0),
        "finetune_steps": Int(0),
        "lr": Real(0.0, None, "()"),
        "batch_size": Int(1),
        "val_share": Real(0.0, 1.0, "()"),
    }

    def __init__(
        self,
        prune_rule: str = "fixed",
        prune_ratio: float = 0.8,
        ranking: str = "mean",
        prune_step: float = 0.05,
        max_prune: float = 0.9,
        tolerance: float = 0.05,
        finetune_steps: int = 100,
        lr: float = 2e-5,
        batch_size: int = 32,
        val_share: float = 0.5,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        self.prune_rule = prune_rule
        self.prune_ratio = prune_ratio
        self.ranking = ranking
        self.prune_step = prune_step
        self.max_prune = max_prune
        self.tolerance = tolerance
        self.finetune_steps = finetune_steps
        self.lr = lr
        self.batch_size = batch_size
        self.val_share = val_share
        self.seed = seed
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.max_prune < self.prune_step:
            raise ValueError(
                f"max_prune must be in [prune_step, 1), got {self.max_prune!r} with prune_step {self.prune_step!r}"
            )

    def run(self, context: EvaluationContext) -> MitigationResult:
        """Return a pruned and fine-tuned clone of ``context.estimator`` with CA/ASR after every step."""
        self._check_context(context)
        assert context.x_test is not None  # _check_context refuses a context without it
        targets = np.asarray(context.test_targets)
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), 2]))
        order = rng.permutation(targets.shape[0])
        n_val = min(max(1, int(round(self.val_share * targets.shape[0]))), targets.shape[0] - 1)
        val_idx = np.sort(order[:n_val])
        x_val, t_val = load_images(context.x_test, val_idx), targets[val_idx]

        repaired = context.estimator.clone()
        projection, axes = last_stage_parts(repaired.model)
        original = projection.weight.detach().clone()
        ranking = self._rank_channels(repaired, x_val, axes)
        n_channels = ranking.shape[0]

        base_val = _accuracy(repaired, x_val, t_val)
        history = [self._record(repaired, context, "prune", 0, n_channels, base_val)]
        n_kept = 0
        for n in self._prune_counts(n_channels):
            if n <= n_kept:
                continue
            with torch.no_grad():
                projection.weight[:, ranking[:n]] = 0.0
            val = _accuracy(repaired, x_val, t_val)
            history.append(self._record(repaired, context, "prune", n, n_channels, val))
            if self.prune_rule == "tolerance" and base_val - val > self.tolerance:
                with torch.no_grad():
                    projection.weight[:, ranking[n_kept:n]] = original[:, ranking[n_kept:n]]
                break
            n_kept = n
        pruned = ranking[:n_kept]
        extra: dict[str, Any] = {
            "n_channels": n_channels,
            "n_pruned": n_kept,
            "pruned_share": n_kept / n_channels,
            "pruned_channels": pruned,
            "val_accuracy_before": base_val,
            "val_indices": val_idx,
            "params": self.get_params(),
        }
        if self.finetune_steps:
            fit_history = self._fine_tune(repaired, projection, pruned, context)
            val = _accuracy(repaired, x_val, t_val)
            history.append(self._record(repaired, context, "finetune", n_kept, n_channels, val))
            extra["finetune_loss"] = fit_history.get("loss", [])
        return MitigationResult(repaired, history, extra)

    def _check_context(self, context: EvaluationContext) -> None:
        if context.estimator is None:
            raise ValueError("fine_pruning needs context.estimator, the model to repair")
        if context.x_test is None or context.test_targets is None:
            raise ValueError("fine_pruning needs context.x_test and context.test_targets (clean validation data)")
        if len(context.test_targets) < 2 or len(context.x_test) != len(context.test_targets):
            raise ValueError(
                f"fine_pruning needs >= 2 clean test images with one target each, got {len(context.x_test)} "
                f"images and {len(context.test_targets)} targets"
            )
        if self.finetune_steps:
            if context.x_clean is None or _clean_labels(context) is None:
                raise ValueError(
                    "fine_pruning fine-tunes on context.x_clean with labels y_clean (N, 14) (or an ImageSet's "
                    "labels); give them or set finetune_steps=0"
                )
            if context.texts is None or context.text_labels is None:
                raise ValueError("fine_pruning needs context.texts and context.text_labels to fine-tune")

    def _prune_counts(self, n_channels: int) -> list[int]:
        """Channel counts pruned after each step: every `prune_step` up to `max_prune` (tolerance rule) or up to
        `prune_ratio`, which is always the last (fixed rule)."""
        if self.prune_rule == "tolerance":
            steps = int(np.floor(self.max_prune / self.prune_step + 1e-9))
            return [pruned_count(k * self.prune_step, n_channels) for k in range(1, steps + 1)]
        steps = int(np.ceil(self.prune_ratio / self.prune_step - 1e-9))
        shares = [min(k * self.prune_step, self.prune_ratio) for k in range(1, steps)] + [self.prune_ratio]
        return [pruned_count(share, n_channels) for share in shares]

    def _rank_channels(self, estimator: Any, x_val: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """Channel indices sorted from least to most active on the validation images (`ranking`)."""
        batches = (
            estimator.get_activations(
                x_val[start : start + self.batch_size], "vision_last_stage", batch_size=self.batch_size
            )
            for start in range(0, x_val.shape[0], self.batch_size)
        )
        return rank_channels(batches, axes, self.ranking)

    @staticmethod
    def _record(
        estimator: Any, context: EvaluationContext, stage: str, n: int, n_channels: int, val_accuracy: float
    ) -> dict[str, Any]:
        context.report(f"{stage} {n}", estimator)
        return {"stage": stage, "n_pruned": n, "pruned_share": n / n_channels, "val_ca": val_accuracy}

    def _fine_tune(
        self, estimator: Any, projection: nn.Linear, pruned: np.ndarray, context: EvaluationContext
    ) -> dict[str, list[float]]:
        mask = torch.ones_like(projection.weight)
        mask[:, pruned] = 0.0
        handle = projection.weight.register_hook(lambda grad: grad * mask)
        try:
            history = estimator.fit(
                context.x_clean,
                _clean_labels(context),
                texts=context.texts,
                text_labels=context.text_labels,
                batch_size=self.batch_size,
                steps=int(self.finetune_steps),
                lr=self.lr,
                seed=self.seed,
                verbose=self.verbose,
            )
        finally:
            handle.remove()
        with torch.no_grad():
            projection.weight.mul_(mask)
        return history


def _clean_labels(context: EvaluationContext) -> np.ndarray | None:
    if context.y_clean is not None:
        return np.asarray(context.y_clean)
    return getattr(context.x_clean, "labels", None)


def _accuracy(estimator: Any, x: np.ndarray, targets: np.ndarray) -> float:
    return float((estimator.predict(x).argmax(axis=1) == targets).mean())
