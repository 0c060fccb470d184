"""Fine-pruning on a tiny MedCLIP: prunes on a clone, the released fixed share or artmed's accuracy tolerance,
fine-tuning keeps the cut."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from artmed import MedCLIPEstimator
from artmed.defenses import EvaluationContext, FinePruning, MitigationResult
from artmed.defenses import fine_pruning as fp
from artmed.models import build_medclip, default_tokenizer
from artmed.models.config import SwinVisionConfig

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
        x_test=x_test,
        test_targets=np.arange(16) % 2,
        x_clean=x_clean,
        y_clean=labels(np.arange(8) % 2),
        texts=TEXTS,
        text_labels=labels([0, 0, 1, 1]),
    )


def projection_weight(estimator):
    return fp.last_stage_parts(estimator.model)[0].weight.detach().clone()


def zero_columns(weight):
    return int((weight.abs().sum(0) == 0).sum())


def test_prunes_a_clone_up_to_max_and_fine_tuning_keeps_the_cut(ctx):
    before = projection_weight(ctx.estimator)
    reported = []
    monitored = replace(ctx, monitor=lambda label, model: reported.append((label, projection_weight(model))))
    result = FinePruning(
        prune_rule="tolerance", prune_step=0.25, max_prune=0.75, tolerance=1.0, finetune_steps=2, batch_size=8
    ).run(monitored)
    assert isinstance(result, MitigationResult) and result.estimator is not ctx.estimator
    assert torch.equal(projection_weight(ctx.estimator), before)
    after = projection_weight(result.estimator)
    n_channels = result.extra["n_channels"]
    assert result.extra["n_pruned"] == round(0.75 * n_channels) == zero_columns(after)
    assert (after[:, result.extra["pruned_channels"]] == 0).all()
    assert [h["stage"] for h in result.history] == ["prune"] * 4 + ["finetune"]
    assert {"val_ca", "pruned_share"} <= set(result.history[-1])
    assert [label for label, _ in reported] == [f"prune {round(k * 0.25 * n_channels)}" for k in range(4)] + [
        f"finetune {result.extra['n_pruned']}"
    ]
    assert [zero_columns(w) for (w,) in [(w,) for _, w in reported[:4]]] == [
        round(k * 0.25 * n_channels) for k in range(4)
    ]
    assert torch.equal(reported[-1][1], projection_weight(result.estimator))
    kept = np.setdiff1d(np.arange(n_channels), result.extra["pruned_channels"])
    assert not torch.equal(after[:, kept], before[:, kept])


def test_stops_before_the_step_that_costs_more_than_tolerance(ctx, monkeypatch):
    accuracies = iter([0.9, 0.88, 0.8, 0.9])
    monkeypatch.setattr(fp, "_accuracy", lambda *args: next(accuracies))
    before = projection_weight(ctx.estimator)
    result = FinePruning(prune_rule="tolerance", prune_step=0.25, max_prune=0.75, tolerance=0.05, finetune_steps=0).run(
        ctx
    )
    n_channels = result.extra["n_channels"]
    assert result.extra["n_pruned"] == round(0.25 * n_channels)
    assert [h["val_ca"] for h in result.history] == [0.9, 0.88, 0.8]
    after = projection_weight(result.estimator)
    assert zero_columns(after) == result.extra["n_pruned"]
    kept = np.setdiff1d(np.arange(n_channels), result.extra["pruned_channels"])
    assert torch.equal(after[:, kept], before[:, kept])


def test_validation_share_is_a_seeded_subset(ctx):
    runs = [
        FinePruning(prune_step=0.5, max_prune=0.5, finetune_steps=0, val_share=0.25, seed=s).run(ctx) for s in (0, 0, 1)
    ]
    val = [r.extra["val_indices"] for r in runs]
    assert len(val[0]) == 4 and len(set(val[0])) == 4 and set(val[0]) <= set(range(16))
    assert np.array_equal(val[0], val[1]) and not np.array_equal(val[0], val[2])


def test_missing_inputs_rejected(ctx):
    with pytest.raises(ValueError, match="context.estimator"):
        FinePruning().run(EvaluationContext())
    no_labels = EvaluationContext(
        estimator=ctx.estimator,
        x_test=ctx.x_test,
        test_targets=ctx.test_targets,
        x_clean=ctx.x_clean,
        texts=TEXTS,
        text_labels=ctx.text_labels,
    )
    with pytest.raises(ValueError, match="y_clean"):
        FinePruning(finetune_steps=5).run(no_labels)
    with pytest.raises(ValueError, match="max_prune"):
        FinePruning(prune_step=0.5, max_prune=0.25)


def swin_estimator():
    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    vision = SwinVisionConfig(
        image_size=SIZE, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2), drop_path_rate=0.0
    )
    return MedCLIPEstimator(
        build_medclip("tiny", vocab_size=len(tokenizer), vision=vision),
        tokenizer,
        PROMPTS,
        input_shape=(1, SIZE, SIZE),
        device="cpu",
        batch_size=8,
    )


def test_defaults_are_the_release():
    params = FinePruning().get_params()
    assert (params["prune_rule"], params["prune_ratio"], params["ranking"]) == ("fixed", 0.8, "mean")


def test_fixed_rule_prunes_the_released_share_whatever_the_accuracy(ctx, monkeypatch):
    accuracies = iter([0.9, 0.5, 0.1, 0.0, 0.0])
    monkeypatch.setattr(fp, "_accuracy", lambda *args: next(accuracies))
    reported = []
    monitored = replace(ctx, monitor=lambda label, model: reported.append(label))
    result = FinePruning(prune_step=0.25, tolerance=0.05, finetune_steps=0).run(monitored)
    n_channels = result.extra["n_channels"]
    assert result.extra["n_pruned"] == round(0.8 * n_channels) == zero_columns(projection_weight(result.estimator))
    assert reported == [f"prune {n}" for n in (0, 32, 64, 96, 102)] and n_channels == 128
    x_val = ctx.x_test[result.extra["val_indices"]]
    mean = ctx.estimator.get_activations(x_val, "vision_last_stage", batch_size=8).mean(axis=(0, 2, 3))
    assert set(result.extra["pruned_channels"]) == set(np.argsort(mean, kind="stable")[:102])


def test_ranking_by_mean_or_mean_abs():
    acts = np.array([[[1.0, -3.0, 0.5]], [[1.0, 1.0, 0.5]]])  # (B=2, L=1, C=3)
    assert fp.rank_channels([acts], (0, 1), "mean").tolist() == [1, 2, 0]
    assert fp.rank_channels([acts], (0, 1), "mean_abs").tolist() == [2, 0, 1]
    relu = np.abs(acts)
    assert np.array_equal(fp.rank_channels([relu], (0, 1), "mean"), fp.rank_channels([relu], (0, 1), "mean_abs"))
    with pytest.raises(ValueError, match="ranking"):
        fp.rank_channels([acts], (0, 1), "median")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prune_rule": "steps"}, "prune_rule"),
        ({"ranking": "max"}, "ranking"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"prune_ratio": 0}, "prune_ratio"),
    ],
)
def test_bad_params_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FinePruning(**kwargs)
    defense = FinePruning()
    with pytest.raises(ValueError, match=match):
        defense.set_params(prune_step=0.1, **kwargs)
    assert defense.get_params() == FinePruning().get_params()


@pytest.mark.parametrize("encoder", ["resnet", "swin"])
def test_zeroed_columns_equal_a_mask_on_the_last_stage_output(ctx, encoder):
    """The projection-column cut is the release's channel removal: same embedding and same gradients as holding
    the channels' last-stage output at zero."""
    estimator = ctx.estimator.clone() if encoder == "resnet" else swin_estimator()
    vision = estimator.model.vision_model
    stage = vision.model.layer4 if encoder == "resnet" else vision.model.layernorm
    projection, _ = fp.last_stage_parts(estimator.model)
    channels = torch.tensor([0, 3, 5, 9])
    x = torch.tensor(ctx.x_test[:4])

    def embedding_and_grads():
        vision.zero_grad()
        embedding = vision(x)
        embedding.pow(2).sum().backward()
        return embedding.detach(), {
            n: p.grad.clone() for n, p in vision.named_parameters() if p.grad is not None and p is not projection.weight
        }

    def mask(module, inputs, output):
        output = output.clone()
        output[(slice(None), channels) if encoder == "resnet" else (..., channels)] = 0.0
        return output

    handle = stage.register_forward_hook(mask)
    masked, masked_grads = embedding_and_grads()
    handle.remove()
    with torch.no_grad():
        projection.weight[:, channels] = 0.0
    cut, cut_grads = embedding_and_grads()
    torch.testing.assert_close(cut, masked, rtol=0, atol=1e-6)
    assert masked_grads.keys() == cut_grads.keys() and len(cut_grads) > 10
    for name, grad in cut_grads.items():
        torch.testing.assert_close(grad, masked_grads[name], rtol=1e-5, atol=1e-6)


def test_artmed_variant_is_unchanged(ctx):
    """``prune_rule="tolerance", ranking="mean_abs"`` reproduces artmed's fine-pruning before the release default.

    ``golden/fine_pruning_artmed_variant.json``: FinePruning(prune_step=0.25, max_prune=0.75, tolerance=0.05,
    finetune_steps=3, lr=1e-3, batch_size=8) run by the code of main eb375ce on this module's ``ctx`` (ResNet) and on
    ``swin_estimator()`` with the same data; on that machine the new code's weights were bit-identical. Channel sets
    and accuracies are compared exactly, the fine-tuning losses and predictions to float32 rounding over 3 steps.
    """
    golden = json.loads((Path(__file__).parent / "golden" / "fine_pruning_artmed_variant.json").read_text())
    for name, estimator in (("resnet", ctx.estimator), ("swin", swin_estimator())):
        result = FinePruning(
            prune_rule="tolerance",
            ranking="mean_abs",
            prune_step=0.25,
            max_prune=0.75,
            tolerance=0.05,
            finetune_steps=3,
            lr=1e-3,
            batch_size=8,
        ).run(replace(ctx, estimator=estimator))
        expected = golden[name]
        assert result.extra["pruned_channels"].tolist() == expected["pruned_channels"]
        assert [h["val_ca"] for h in result.history] == expected["val_ca"]
        np.testing.assert_allclose(result.extra["finetune_loss"], expected["finetune_loss"], rtol=1e-5)
        np.testing.assert_allclose(result.estimator.predict(ctx.x_test), expected["predictions"], atol=1e-5)
