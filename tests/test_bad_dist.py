"""BadDist on tiny models: triggered embeddings leave the clean encoder's, clean ones stay; the input is untouched."""

import numpy as np
import pytest
import torch

from artmed.attacks.poisoning import BADDIST_SETTINGS, BadDist, encoder_cosines
from artmed.attacks.poisoning.bad_dist import resolve_baddist_params
from artmed.attacks.triggers import FourierTrigger, PatchTrigger
from artmed.data.dataset import ArrayImageSet
from artmed.estimator import MedCLIPEstimator
from artmed.models import SwinVisionConfig, build_medclip, default_tokenizer

PROMPTS = {"Normal": ["no acute cardiopulmonary findings"], "Pneumonia": ["focal consolidation of pneumonia"]}
SIZE = 24


def shadow(n, seed):
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(n, 1, SIZE, SIZE)).astype(np.float32)


def mean_cos(a, b):
    return float(np.sum(a * b, axis=1).mean())


@pytest.fixture(scope="module")
def tiny():
    return MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")


def test_backdoor_separates_triggered_embeddings(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    trigger = PatchTrigger(size=6)
    attack = BadDist(tiny, trigger, lr=0.01, steps=250, batch_size=8, seed=0, verbose=False)
    backdoored = attack.poison_estimator(shadow(32, seed=0))

    held_out = shadow(32, seed=1)
    clean_cos = mean_cos(backdoored.embed_images(held_out), tiny.embed_images(held_out))
    trig_cos = mean_cos(backdoored.embed_images(trigger(held_out)), tiny.embed_images(trigger(held_out)))
    assert clean_cos > 0.8  # measured 0.96
    assert trig_cos < 0.0  # measured -0.97 (1.0 before the attack)
    history = attack.history_
    assert len(history["loss"]) == len(history["cos_clean"]) == len(history["cos_trigger"]) == 250
    assert history["cos_trigger"][0] > 0.99 and history["cos_trigger"][-1] < 0.0

    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input estimator was modified"
    assert backdoored is not tiny and backdoored.model is not tiny.model
    assert backdoored.predict(held_out).shape == (32, 2)

    bd_state = backdoored.model.state_dict()
    bn_keys = [k for k in before if ".bn" in k or "downsample.1" in k]
    assert bn_keys and all(torch.equal(before[k], bd_state[k]) for k in bn_keys), "BatchNorm must stay frozen"
    assert not torch.equal(before["vision_model.model.conv1.weight"], bd_state["vision_model.model.conv1.weight"])
    text_keys = [k for k in before if k.startswith("text_model.") or k == "logit_scale"]
    assert all(torch.equal(before[k], bd_state[k]) for k in text_keys), "only the vision encoder is fine-tuned"
    assert all(p.requires_grad for p in backdoored.model.parameters())


def test_seeded_and_imageset_input(tiny):
    x = shadow(12, seed=2)
    trigger = FourierTrigger()
    runs = [
        BadDist(tiny, trigger, lr=0.01, steps=4, batch_size=4, seed=3, verbose=False),
        BadDist(tiny, trigger, lr=0.01, steps=4, batch_size=4, seed=3, verbose=False),
    ]
    first = runs[0].poison_estimator(x)
    second = runs[1].poison_estimator(ArrayImageSet(x, np.zeros((12, 14), dtype=np.float32)))
    assert runs[0].history_ == runs[1].history_
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k])
    epochs = BadDist(tiny, trigger, lr=0.01, epochs=2, batch_size=5, verbose=False)
    epochs.poison_estimator(x)
    assert len(epochs.history_["loss"]) == 2 * 3


def test_swin_encoder_runs():
    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    vision = SwinVisionConfig(
        image_size=SIZE, patch_size=4, window_size=3, embed_dim=12, depths=(1, 1), num_heads=(2, 2), drop_path_rate=0.1
    )
    model = build_medclip("tiny", vocab_size=len(tokenizer), vision=vision)
    estimator = MedCLIPEstimator(model, tokenizer, PROMPTS, input_shape=(1, SIZE, SIZE), device="cpu")
    attack = BadDist(estimator, PatchTrigger(size=6), lr=0.01, steps=3, batch_size=4, verbose=False)
    backdoored = attack.poison_estimator(shadow(8, seed=4))
    assert len(attack.history_["cos_trigger"]) == 3
    assert backdoored.embed_images(shadow(2, seed=5)).shape == (2, 512)


def test_poison_returns_triggered_inputs(tiny):
    x = shadow(3, seed=6)
    trigger = PatchTrigger(size=6)
    x_p, y_p = BadDist(tiny, trigger, verbose=False).poison(x, np.eye(2)[[0, 1, 0]])
    np.testing.assert_array_equal(x_p, trigger(x))
    np.testing.assert_array_equal(y_p, np.eye(2)[[0, 1, 0]])


def test_init_noise_breaks_the_symmetric_start(tiny):
    """At f_b = f_c the first step sees cos 1 on both terms; init_noise starts below it, seeded and reproducible."""
    x = shadow(8, seed=4)
    plain = BadDist(tiny, PatchTrigger(size=6), lr=0.01, steps=1, batch_size=8, seed=0, verbose=False)
    plain.poison_estimator(x)
    noisy = [
        BadDist(tiny, PatchTrigger(size=6), lr=0.01, steps=1, batch_size=8, seed=0, init_noise=0.05, verbose=False)
        for _ in range(2)
    ]
    for attack in noisy:
        attack.poison_estimator(x)
    assert plain.history_["cos_trigger"][0] > 0.9999
    assert noisy[0].history_["cos_trigger"][0] < 0.999
    assert noisy[0].history_ == noisy[1].history_


@pytest.mark.parametrize(
    "params",
    [
        {"lambda_clean": -1.0},
        {"lambda_clean": 0.0, "lambda_trigger": 0.0},
        {"lr": 0.0},
        {"momentum": 1.0},
        {"weight_decay": -1e-4},
        {"epochs": 0},
        {"steps": 0},
        {"batch_size": 0},
        {"seed": -1},
        {"init_noise": -0.1},
        {"device": "tpu"},
        {"trigger": "patch"},
        {"optimizer": "lbfgs"},
        {"schedule": "linear"},
    ],
)
def test_bad_parameters(tiny, params):
    kwargs = {"trigger": PatchTrigger(size=6), **params}
    with pytest.raises(ValueError):
        BadDist(tiny, **kwargs)


def test_bad_shadow_set(tiny):
    attack = BadDist(tiny, PatchTrigger(size=6), steps=1, verbose=False)
    with pytest.raises(ValueError, match="spatial size"):
        attack.poison_estimator(np.zeros((4, 1, SIZE + 1, SIZE + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="extra"):
        attack.poison_estimator(shadow(4, seed=0), nb_epochs=3)


def test_named_settings_keep_the_paper_reachable():
    paper = resolve_baddist_params({"settings": "paper"})
    assert {
        k: paper[k]
        for k in (
            "optimizer",
            "lr",
            "momentum",
            "weight_decay",
            "lambda_clean",
            "lambda_trigger",
            "batch_size",
            "epochs",
        )
    } == {
        "optimizer": "sgd",
        "lr": 1e-4,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lambda_clean": 5.0,
        "lambda_trigger": 1.0,
        "batch_size": 32,
        "epochs": 200,
    }
    assert resolve_baddist_params({"settings": "tiny", "steps": 7})["steps"] == 7
    assert resolve_baddist_params({"lr": 0.5}) == {"lr": 0.5}
    with pytest.raises(ValueError, match="unknown BadDist settings 'fast'"):
        resolve_baddist_params({"settings": "fast"})
    assert set(BADDIST_SETTINGS) == {"paper", "tiny"}


def test_adam_with_cosine_decay_separates_where_sgd_stalls(tiny):
    """The saddle at f_b = f_c: SGD's step shrinks with 1/|embedding|^2, AdamW's does not (see BADDIST_SETTINGS)."""
    trigger = PatchTrigger(size=6)
    held_out = shadow(32, seed=1)
    results = {}
    for optimizer, lr in (("sgd", 1e-3), ("adam", 1e-3)):
        attack = BadDist(
            tiny,
            trigger,
            optimizer=optimizer,
            lr=lr,
            schedule="cosine",
            steps=150,
            batch_size=8,
            weight_decay=0.0,
            init_noise=0.01,
            seed=0,
            verbose=False,
        )
        results[optimizer] = encoder_cosines(attack.poison_estimator(shadow(32, seed=0)), tiny, held_out, trigger)
    # measured -0.93 / 0.93 (over 3 model x 2 BadDist seeds: -0.25 to -0.95 / 0.82 to 0.95)
    assert results["adam"]["cos_trigger"] < 0.0 and results["adam"]["cos_clean"] > 0.8
    assert results["sgd"]["cos_trigger"] > 0.99  # measured 1.000 on all 6: same steps and lr, still at the saddle


def test_cosine_schedule_ends_at_zero_learning_rate(tiny, monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    BadDist(
        tiny, PatchTrigger(size=6), optimizer="adam", lr=1e-2, schedule="cosine", steps=5, batch_size=4, verbose=False
    ).poison_estimator(shadow(8, seed=0))
    assert seen[0] == pytest.approx(1e-2) and seen == sorted(seen, reverse=True) and seen[-1] < 1e-2 * 0.2


def test_encoder_cosines_of_an_untouched_copy_are_one(tiny):
    x = shadow(6, seed=3)
    cos = encoder_cosines(tiny.clone(), tiny, x, PatchTrigger(size=6))
    assert cos["cos_clean"] == pytest.approx(1.0, abs=1e-5) and cos["cos_trigger"] == pytest.approx(1.0, abs=1e-5)


def test_teacher_embeddings_equal_the_teachers_output_on_each_step_batch(tiny):
    """The frozen teacher's embeddings, computed once, are bit for bit what the teacher gives on a training step's
    batch (clean rows then their triggered copies, batch_size rows each) wherever those rows sit in the data."""
    from artmed.attacks.poisoning.bad_dist import _CleanAndTriggered, teacher_embeddings
    from artmed.inputs import normalize_pixels

    x = shadow(20, seed=3)
    trigger = PatchTrigger(size=6)
    teacher = tiny.model.vision_model.eval()
    shape = tiny.input_shape
    clean, triggered = teacher_embeddings(teacher, x, shape, torch.device("cpu"), 8, 0, _CleanAndTriggered(trigger))
    assert clean.shape == triggered.shape == (20, clean.shape[1])
    rows = np.array([13, 2, 19, 7, 0, 11, 5, 16])  # a step's batch: 8 rows from all over the data
    batch = torch.from_numpy(np.concatenate([x[rows], trigger(x[rows])]))
    with torch.no_grad():
        expected = teacher(normalize_pixels(batch))
    assert torch.equal(clean[rows], expected[:8]) and torch.equal(triggered[rows], expected[8:])
    assert not torch.equal(clean, triggered)
