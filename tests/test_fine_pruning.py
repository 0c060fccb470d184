"""Fine-pruning on a tiny MedCLIP: prunes on a clone, stops at the accuracy tolerance, fine-tuning keeps the cut."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from artmed import MedCLIPEstimator
from artmed.defenses import EvaluationContext, FinePruning, MitigationResult
from artmed.defenses import fine_pruning as fp

SIZE = 32
PROMPTS = {"normal": ["no acute findings", "the lungs are clear"], "opacity": ["lung opacity", "patchy opacity"]}
TEXTS = ["no acute findings", "the lungs are clear", "lung opacity", "patchy opacity in the right lung"]


def labels(classes):
    y = np.zeros((len(classes), 14), np.float32)
    y[np.arange(len(classes)), np.where(np.asarray(classes) == 0, 0, 4)] = 1.0
    return y


@pytest.fixture(scope="module")
def ctx():
    rng = np.random.default_rng(0)
    x_test = rng.uniform(0, 1, (16, 1, SIZE, SIZE)).astype(np.float32)
    x_clean = rng.uniform(0, 1, (8, 1, SIZE, SIZE)).astype(np.float32)
    return EvaluationContext(
        estimator=MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, batch_size=8),
        x_test=x_test, test_targets=np.arange(16) % 2,
        x_clean=x_clean, y_clean=labels(np.arange(8) % 2), texts=TEXTS, text_labels=labels([0, 0, 1, 1]),
    )


def projection_weight(estimator):
    return fp.last_stage_parts(estimator.model)[0].weight.detach().clone()


def zero_columns(weight):
    return int((weight.abs().sum(0) == 0).sum())


def test_prunes_a_clone_up_to_max_and_fine_tuning_keeps_the_cut(ctx):
    before = projection_weight(ctx.estimator)
    reported = []
    monitored = replace(ctx, monitor=lambda label, model: reported.append((label, projection_weight(model))))
    result = FinePruning(prune_step=0.25, max_prune=0.75, tolerance=1.0, finetune_steps=2, batch_size=8).run(monitored)
    assert isinstance(result, MitigationResult) and result.estimator is not ctx.estimator
    assert torch.equal(projection_weight(ctx.estimator), before)
    after = projection_weight(result.estimator)
    n_channels = result.extra["n_channels"]
    assert result.extra["n_pruned"] == round(0.75 * n_channels) == zero_columns(after)
    assert (after[:, result.extra["pruned_channels"]] == 0).all()
    assert [h["stage"] for h in result.history] == ["prune"] * 4 + ["finetune"]
    assert {"val_ca", "pruned_share"} <= set(result.history[-1])
    assert [label for label, _ in reported] == [f"prune {round(k * 0.25 * n_channels)}" for k in range(4)] + [
        f"finetune {result.extra['n_pruned']}"]
    assert [zero_columns(w) for w, in [(w,) for _, w in reported[:4]]] == [round(k * 0.25 * n_channels)
                                                                          for k in range(4)]
    assert torch.equal(reported[-1][1], projection_weight(result.estimator))
    kept = np.setdiff1d(np.arange(n_channels), result.extra["pruned_channels"])
    assert not torch.equal(after[:, kept], before[:, kept])


def test_stops_before_the_step_that_costs_more_than_tolerance(ctx, monkeypatch):
    accuracies = iter([0.9, 0.88, 0.8, 0.9])
    monkeypatch.setattr(fp, "_accuracy", lambda *args: next(accuracies))
    before = projection_weight(ctx.estimator)
    result = FinePruning(prune_step=0.25, max_prune=0.75, tolerance=0.05, finetune_steps=0).run(ctx)
    n_channels = result.extra["n_channels"]
    assert result.extra["n_pruned"] == round(0.25 * n_channels)
    assert [h["val_ca"] for h in result.history] == [0.9, 0.88, 0.8]
    after = projection_weight(result.estimator)
    assert zero_columns(after) == result.extra["n_pruned"]
    kept = np.setdiff1d(np.arange(n_channels), result.extra["pruned_channels"])
    assert torch.equal(after[:, kept], before[:, kept])


def test_validation_share_is_a_seeded_subset(ctx):
    runs = [FinePruning(prune_step=0.5, max_prune=0.5, finetune_steps=0, val_share=0.25, seed=s).run(ctx)
            for s in (0, 0, 1)]
    val = [r.extra["val_indices"] for r in runs]
    assert len(val[0]) == 4 and len(set(val[0])) == 4 and set(val[0]) <= set(range(16))
    assert np.array_equal(val[0], val[1]) and not np.array_equal(val[0], val[2])


def test_missing_inputs_rejected(ctx):
    with pytest.raises(ValueError, match="context.estimator"):
        FinePruning().run(EvaluationContext())
    no_labels = EvaluationContext(estimator=ctx.estimator, x_test=ctx.x_test, test_targets=ctx.test_targets,
                                  x_clean=ctx.x_clean, texts=TEXTS, text_labels=ctx.text_labels)
    with pytest.raises(ValueError, match="y_clean"):
        FinePruning(finetune_steps=5).run(no_labels)
    with pytest.raises(ValueError, match="max_prune"):
        FinePruning(prune_step=0.5, max_prune=0.25)
