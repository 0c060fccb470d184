"""CleanCLIP on a tiny BadMatch-backdoored MedCLIP: ASR falls and CA holds; the input model is untouched; seeded;
the self-supervised term is finite and falls; clean-data sources and parameter checks; the released defaults
(AutoAugment views, EDA once per data set, the release's optimiser and schedule) and artmed's earlier variant,
unchanged."""

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from artmed.attacks.poisoning import BadMatch
from artmed.data.eda import SYNONYMS
from artmed.defenses import cleanclip, registry
from artmed.defenses.base import EvaluationContext
from artmed.defenses.cleanclip import (
    CleanCLIP,
    augment_images,
    augment_texts,
    eda_views,
    in_modal_loss,
    released_text,
)
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.scoring import score_estimator
from toy_task import PROMPTS, SIZE, TEXT_LABELS, TEXTS, TRIGGER, images

ARTMED = dict(weight_decay=1e-4, max_grad_norm=1.0, warmup_steps=None, image_augment="artmed", text_augment="per_step")
"""artmed's variant before the released defaults (with lr=2e-5, batch_size=32, steps=500 its former defaults)."""
FAST = dict(lr=1e-3, batch_size=16, verbose=False, **ARTMED)
RELEASED = {
    "lr": 1e-5,
    "weight_decay": 0.1,
    "max_grad_norm": None,
    "warmup_steps": 50,
    "batch_size": 64,
    "epochs": 10,
    "steps": None,
    "lambda_mm": 1.0,
    "lambda_ss": 1.0,
    "temperature": None,
    "image_augment": "autoaugment",
    "text_augment": "once",
}
"""nishadsinghi/CleanCLIP d6e2f1db: README's CleanCLIP command (batch 64, 10 epochs, 50 warm-up steps, lr 1e-5),
src/parser.py (weight decay 0.1, clip and in-modal weights 1), src/train.py (no clipping, learnt logit scale),
src/data.py (AutoAugment per item, EDA once in the dataset's constructor)."""


def state(estimator):
    return {k: v.detach().clone() for k, v in estimator.model.state_dict().items()}


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained on BadMatch data (30% of images triggered and relabelled "No Finding") and its context."""
    x, y, _ = images(128, seed=0)
    attack = BadMatch(TRIGGER, target="No Finding", percent_poison=0.3, seed=0)
    x_p, y_p = attack.poison(x, y)
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    estimator.fit(x_p, y_p, texts=TEXTS, text_labels=TEXT_LABELS, steps=60, batch_size=16, lr=1e-3, verbose=False)
    x_test, _, targets = images(64, seed=1)
    x_clean, y_clean, _ = images(64, seed=2)
    scores = {}

    def monitor(label, model):  # what the harness does: score the reported model with the attack's trigger
        scores[label] = score_estimator(model, x_test, targets, TRIGGER(x_test), 0)

    context = EvaluationContext(
        estimator=estimator,
        x_train=x_p,
        y_train=y_p,
        texts=TEXTS,
        text_labels=TEXT_LABELS,
        x_test=x_test,
        test_targets=targets,
        x_clean=x_clean,
        y_clean=y_clean,
        monitor=monitor,
    )
    return context, attack.poison_mask_, scores


@pytest.fixture(scope="module")
def context(trained):
    return trained[0]


@pytest.fixture(scope="module")
def run(trained):
    context, _, scores = trained
    before = state(context.estimator)
    result = CleanCLIP(steps=40, seed=0, **FAST).run(context)
    return before, result, dict(scores)


def test_lowers_asr_and_keeps_ca(run):
    _, result, scores = run
    before, after = scores["before"], scores["after"]
    assert before["asr"] >= 0.8  # measured 0.94: the backdoor works
    assert after["asr"] <= 0.25  # measured 0.0 (seeds 1-3: 0.16, 0.0, 0.03)
    assert after["ca"] >= before["ca"] - 0.05  # measured 0.77 -> 1.00
    assert result.extra["clean_source"] == "x_clean" and result.extra["labels_source"] == "y_clean"
    assert result.extra["n_clean"] == 64


def test_history_records_every_step(run):
    _, result, scores = run
    history = result.history
    assert [h["step"] for h in history] == list(range(1, 41)) and list(scores) == ["before", "after"]
    for h in history:
        assert h["loss"] == pytest.approx(h["loss_mm"] + h["loss_ss"], rel=1e-5)
        assert h["loss_ss"] == pytest.approx((h["loss_ss_image"] + h["loss_ss_text"]) / 2, rel=1e-5)
    assert history[0]["lr"] < max(h["lr"] for h in history)  # warm-up, then decay
    assert history[-1]["lr"] < 0.05 * FAST["lr"]


def test_self_supervised_term_finite_and_decreasing(run):
    _, result, _ = run
    steps = result.history
    for key in ("loss", "loss_mm", "loss_ss", "loss_ss_image", "loss_ss_text"):
        assert all(np.isfinite(h[key]) and h[key] > 0 for h in steps), key
    first = np.mean([h["loss_ss"] for h in steps[:5]])
    last = np.mean([h["loss_ss"] for h in steps[-5:]])
    assert last < 0.7 * first  # measured 2.3 -> 1.0


def test_input_estimator_unchanged(context, run):
    before, result, _ = run
    after = context.estimator.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input estimator was modified"
    repaired = result.estimator
    assert repaired is not context.estimator and repaired.model is not context.estimator.model
    assert any(not torch.equal(v, before[k]) for k, v in repaired.model.state_dict().items())
    assert repaired.classes == context.estimator.classes and not repaired.model.training


def test_seeded(context):
    first, again, other = (CleanCLIP(steps=3, seed=s, **FAST).run(context) for s in (5, 5, 6))
    assert first.history == again.history
    a, b = first.estimator.model.state_dict(), again.estimator.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.history[1]["loss"] != other.history[1]["loss"]


def test_labels_from_training_rows_and_fallback_subset(context):
    rows = np.array([3, 10, 40, 77, 90, 101])
    subset = EvaluationContext(
        estimator=context.estimator,
        x_train=context.x_train,
        y_train=context.y_train,
        texts=TEXTS,
        text_labels=TEXT_LABELS,
        x_clean=context.x_train[rows],
    )
    result = CleanCLIP(steps=1, **FAST).run(subset)
    assert result.extra["labels_source"].startswith("y_train")
    assert len(result.history) == 1 and "ca" not in result.history[0]  # no test set, no scores

    fallback = EvaluationContext(
        estimator=context.estimator,
        x_train=context.x_train,
        y_train=context.y_train,
        texts=TEXTS,
        text_labels=TEXT_LABELS,
    )
    result = CleanCLIP(steps=1, n_clean=50, seed=1, **FAST).run(fallback)
    extra = result.extra
    assert extra["clean_source"] == "x_train_subset" and extra["n_clean"] == 50
    assert np.array_equal(extra["clean_indices"], np.unique(extra["clean_indices"]))
    assert "n_poisoned_in_clean" not in extra  # the defense cannot know; the harness counts them


def test_missing_clean_labels(context):
    x_clean, _, _ = images(8, seed=3)
    unlabelled = EvaluationContext(
        estimator=context.estimator,
        x_train=context.x_train,
        y_train=context.y_train,
        texts=TEXTS,
        text_labels=TEXT_LABELS,
        x_clean=x_clean,
    )
    with pytest.raises(ValueError, match="y_clean"):
        CleanCLIP(steps=1, **FAST).run(unlabelled)
    result = CleanCLIP(steps=1, lambda_mm=0.0, **FAST).run(unlabelled)  # self-supervised only: no labels needed
    assert result.history[0]["loss_mm"] == 0.0 and result.extra["labels_source"] is None
    with pytest.raises(ValueError, match="texts"):
        CleanCLIP(steps=1, **FAST).run(EvaluationContext(estimator=context.estimator, x_clean=x_clean))
    with pytest.raises(ValueError, match="estimator"):
        CleanCLIP(steps=1, **FAST).run(EvaluationContext(texts=TEXTS, text_labels=TEXT_LABELS))


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"lambda_mm": -1.0}, "lambda_mm"),
        ({"lambda_ss": float("nan")}, "lambda_ss"),
        ({"lambda_mm": 0.0, "lambda_ss": 0.0}, "both 0"),
        ({"temperature": 0.0}, "temperature"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"word_dropout": 1.0}, "word_dropout"),
        ({"epochs": 0}, "epochs"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"image_augment": "crop"}, "image_augment"),
        ({"text_augment": "eda"}, "text_augment"),
        ({"n_clean": 1}, "n_clean"),
        ({"seed": -1}, "seed"),
        ({"lambda_ss": True}, "lambda_ss"),
    ],
)
def test_bad_params(params, name):
    with pytest.raises(ValueError, match=name):
        CleanCLIP(**params)


def test_augmentations_seeded_and_in_range():
    pixels = torch.rand(6, 1, SIZE, SIZE)
    views = [augment_images(pixels, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert views[0].shape == pixels.shape and 0.0 <= float(views[0].min()) and float(views[0].max()) <= 1.0
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    assert not torch.allclose(views[0], pixels, atol=0.05)
    texts = ["no acute cardiopulmonary process", "pneumonia"]
    out = augment_texts(texts, np.random.default_rng(0), word_dropout=0.5)
    assert out[1] == "pneumonia" and 1 <= len(out[0].split()) <= 4 and set(out[0].split()) <= set(texts[0].split())
    assert out == augment_texts(texts, np.random.default_rng(0), word_dropout=0.5)


def test_in_modal_loss_treats_duplicates_as_positives():
    gen = torch.Generator().manual_seed(0)
    emb, aug = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    logits = 10.0 * torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(aug, dim=1).T
    plain = in_modal_loss(emb, aug, 10.0, torch.eye(4, dtype=torch.bool))
    assert float(plain) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.arange(4))), rel=1e-5)
    same = torch.eye(4, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True  # items 0 and 2 are the same sentence
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    expected = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    assert float(in_modal_loss(emb, aug, 10.0, same)) == pytest.approx(float(expected), rel=1e-5)


def test_plugin_line_loads_through_the_registry(monkeypatch):
    point = metadata.EntryPoint("cleanclip", "artmed.defenses.cleanclip:CleanCLIP", registry.GROUP)
    monkeypatch.setattr(
        registry.metadata,
        "entry_points",
        lambda group=None: metadata.EntryPoints([point] if group in (None, registry.GROUP) else []),
    )
    assert registry.get("cleanclip") is CleanCLIP
    defense = registry.create("cleanclip", lambda_ss=0.5)
    assert defense.kind == "mitigation" and defense.name == "cleanclip" and defense.get_params()["lambda_ss"] == 0.5


def test_defaults_are_the_release():
    params = CleanCLIP().get_params()
    assert {k: params[k] for k in RELEASED} == RELEASED


def test_artmed_variant_unchanged():
    """artmed's earlier variant, selected by parameters, repeats the run recorded with the code before the released
    defaults (tests/golden/cleanclip_artmed_variant.json: 32 ``toy_task.images(32, seed=0)`` clean images, a
    ``MedCLIPEstimator.tiny(PROMPTS, image_size=32, seed=0)``, ``CleanCLIP(steps=4, seed=3, lr=1e-3, batch_size=8)``,
    one torch thread). Bit-identical on the machine that recorded it; rel 1e-4 allows other x86 float32 kernels."""
    golden = json.loads((Path(__file__).parent / "golden" / "cleanclip_artmed_variant.json").read_text())
    x, y, _ = images(32, seed=0)
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    context = EvaluationContext(estimator=estimator, texts=TEXTS, text_labels=TEXT_LABELS, x_clean=x, y_clean=y)
    result = CleanCLIP(steps=4, seed=3, lr=1e-3, batch_size=8, verbose=False, **ARTMED).run(context)
    for key in ("loss", "loss_mm", "loss_ss", "loss_ss_image", "loss_ss_text", "lr"):
        assert [h[key] for h in result.history] == pytest.approx(golden[key], rel=1e-4), key
    state_sum = sum(
        float(v.double().abs().sum()) for v in result.estimator.model.state_dict().values() if v.dtype.is_floating_point
    )
    assert state_sum == pytest.approx(golden["param_sum"], rel=1e-5)


def test_released_views_schedule_and_length(context, monkeypatch):
    """Default run: one AutoAugment view batch per step, EDA views computed once, steps from epochs, the released
    warm-up (lr·(step+1)/50) and no clipping."""
    calls = {"image": 0, "text": 0}
    real_aa, real_eda = cleanclip.autoaugment, cleanclip.eda_views

    def count_aa(pixels, generator):
        calls["image"] += 1
        return real_aa(pixels, generator)

    def count_eda(texts, seed):
        calls["text"] += 1
        return real_eda(texts, seed)

    monkeypatch.setattr(cleanclip, "autoaugment", count_aa)
    monkeypatch.setattr(cleanclip, "eda_views", count_eda)
    monkeypatch.setattr(cleanclip, "augment_images", None)  # the artmed views must not run
    monkeypatch.setattr(cleanclip, "augment_texts", None)
    result = CleanCLIP(epochs=2, batch_size=16, lr=1e-3, verbose=False).run(context)  # 64 clean images: 4 per epoch
    history = result.history
    assert len(history) == 8 and calls == {"image": 8, "text": 1}
    assert [h["lr"] for h in history] == pytest.approx([1e-3 * (s + 1) / 50 for s in range(8)])
    assert all(np.isfinite(h["loss"]) and h["loss_ss_image"] > 0 and h["loss_ss_text"] > 0 for h in history)
    assert len(CleanCLIP(epochs=1, batch_size=100, lr=1e-3, verbose=False).run(context).history) == 1


def test_released_text_views():
    assert (
        released_text("No acute cardio-pulmonary process.  Patient\u2019s T2 film, 3cm.")
        == "no acute cardio pulmonary process patients t film cm"
    )
    texts = [
        "Mild cardiomegaly. The lungs are clear, no effusion.",
        "the portable film shows a small region of "
        "atelectasis at the left base with mild interval improvement compared to the prior study",
    ]
    views = [eda_views(texts, seed) for seed in (0, 0, 1, 2, 3)]
    assert views[0] == views[1] and len(views[0]) == 2
    synonym_words = {w for syns in SYNONYMS.values() for syn in syns for w in syn.split()}
    assert all(
        set(v.split()) <= set(released_text(t).split()) | synonym_words for vs in views for v, t in zip(vs, texts)
    )
    assert any(vs[1] != released_text(texts[1]) for vs in views)  # the long sentence has free words to move
