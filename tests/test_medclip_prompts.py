"""MedCLIP's sampled prompts (templates, seeded draws), the max-over-prompts ensemble, and scoring over draws."""

import random

import numpy as np
import pytest
import torch

from artmed import MedCLIPEstimator
from artmed.constants import CHEXPERT_LABELS
from artmed.data import medclip_prompts as mp
from artmed.data.medclip_prompts import (
    medclip_class_prompts,
    medclip_prompt_draws,
    no_finding_sentences,
    template_candidates,
)
from artmed.data.reports import finding_phrases
from artmed.data.tasks import CHEXPERT5_CLASSES, TASK_CLASSES
from artmed.evaluations.scoring import score_estimator, score_over_prompt_draws
from artmed.inputs import normalize_pixels
from artmed.prompts import PromptBank, encode_sentences

SIZE = 32


# ------------------------------------------------------------------ templates and draws
def test_template_candidates_are_every_slot_combination_in_the_released_order():
    sizes = {
        "Atelectasis": 210,
        "Cardiomegaly": 15,
        "Consolidation": 192,
        "Edema": 18,
        "Pleural Effusion": 54,
        "COVID": 12,
        "Pneumonia": 312,
    }
    assert {c: len(template_candidates(c)) for c in sizes} == sizes
    # Pleural Effusion's dict lists severity, location, subtype: that is the sentence order
    assert template_candidates("Pleural Effusion")[:2] == [
        "left bilateral pleural effusion",
        "left subpulmonic pleural effusion",
    ]
    assert template_candidates("COVID")[0] == "patchy ground glass opacity in peripheral"
    assert all(s == " ".join(s.split()) for c in sizes for s in template_candidates(c))
    assert [(c, i) for c in sizes for i, s in enumerate(template_candidates(c)) if not s] == [("Pneumonia", 311)]


def test_rsnas_empty_template_sentence_is_drawn_but_left_out():
    sets = medclip_prompt_draws("rsna_like", draws=5, n=10, seed=1)
    assert [len(s["Pneumonia"]) for s in sets] == [10, 9, 10, 10, 10]  # random.Random(1)'s 2nd sample holds it
    rng = random.Random(1)
    assert [s["Pneumonia"] for s in sets] == [
        [p for p in rng.sample(template_candidates("Pneumonia"), 10) if p] for _ in range(5)
    ]


@pytest.mark.parametrize("task", ["rsna_like", "covid_like", "chexpert5"])
def test_ten_prompts_per_class_five_reproducible_draws_that_differ(task):
    sets = medclip_prompt_draws(task, draws=5, n=10, seed=42)
    assert len(sets) == 5
    for s in sets:
        assert list(s) == list(TASK_CLASSES[task])
        assert all(len(v) == 10 and len(set(v)) == 10 or c == "Pleural Effusion" for c, v in s.items())
        assert all(len(v) == 10 for v in s.values())
    assert sets == medclip_prompt_draws(task, draws=5, n=10, seed=42)
    assert medclip_prompt_draws(task, draws=5, n=10, seed=43) != sets
    for cls in TASK_CLASSES[task]:
        assert len({tuple(s[cls]) for s in sets}) == 5, cls
    assert medclip_class_prompts(task, n=10, seed=42) == sets[0]


def test_template_draws_are_the_released_random_sample_stream():
    """zero_shot.py: random.seed(42) once, then per run random.sample(candidates, 10) per class in dict order."""
    rng = random.Random(42)
    expected = [{c: rng.sample(template_candidates(c), 10) for c in CHEXPERT5_CLASSES} for _ in range(5)]
    assert medclip_prompt_draws(list(CHEXPERT5_CLASSES), draws=5, n=10, seed=42) == expected
    # the first COVID draw the released prompts.py records in a comment
    assert medclip_class_prompts("covid_like", seed=42)["COVID"] == [
        "confluent ground glass consolidation in mid",
        "patchy ground glass opacity in mid",
        "patchy ground glass opacity in peripheral",
        "patchy ground glass consolidation in mid",
        "patchy ground glass consolidation in peripheral",
        "confluent ground glass consolidation in lower",
        "confluent ground glass opacity in peripheral",
        "confluent ground glass consolidation in peripheral",
        "confluent ground glass opacity in lower",
        "patchy ground glass opacity in lower",
    ]


def test_sampling_order_does_not_depend_on_the_order_classes_are_given():
    forward = medclip_prompt_draws(list(CHEXPERT5_CLASSES), draws=2, seed=1)
    backward = medclip_prompt_draws(list(reversed(CHEXPERT5_CLASSES)), draws=2, seed=1)
    assert list(backward[0]) == list(reversed(CHEXPERT5_CLASSES))
    assert [dict(sorted(s.items())) for s in forward] == [dict(sorted(s.items())) for s in backward]


def test_no_finding_prompts_come_from_the_given_sentences():
    default = set(finding_phrases("No Finding"))
    for s in medclip_prompt_draws("rsna_like", draws=5, seed=0):
        assert set(s["Normal"]) <= default and len(set(s["Normal"])) == 10
    given = [f"normal sentence number {i}" for i in range(12)]
    sets = medclip_prompt_draws(["No Finding", "COVID"], draws=3, n=10, seed=5, normal_sentences=given)
    assert all(set(s["No Finding"]) <= set(given) for s in sets)
    assert len({tuple(s["No Finding"]) for s in sets}) == 3
    # RandomState(seed).choice(len, n, replace=False): pandas' DataFrame.sample(n) on numpy's seeded global state
    rs = np.random.RandomState(5)
    assert [s["No Finding"] for s in sets] == [[given[i] for i in rs.choice(12, 10, replace=False)] for _ in range(3)]
    # exactly n sentences given: all of them, in order, as the released sampler does
    assert medclip_class_prompts(["Normal", "COVID"], n=10, normal_sentences=given[:10])["Normal"] == given[:10]


def test_no_finding_sentences_applies_the_released_filter():
    nf, edema = CHEXPERT_LABELS.index("No Finding"), CHEXPERT_LABELS.index("Edema")
    labels = np.zeros((5, 14))
    labels[:, nf] = 1
    labels[1, edema] = -1  # uncertain elsewhere: excluded
    labels[2, nf] = 0
    labels[4, edema] = np.nan  # NaN counts as 0
    sentences = ["clear lungs", "clear lungs, possible edema", "edema", "ok", "no acute process"]
    assert no_finding_sentences(sentences, labels) == ["clear lungs", "no acute process"]
    with pytest.raises(ValueError, match=r"labels must be \(5, 14\)"):
        no_finding_sentences(sentences, labels[:, :3])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task_classes=["Normal", "Fracture"]), r"no MedCLIP prompts for classes \['Fracture'\]"),
        (dict(task_classes="mnist"), "unknown task 'mnist'"),
        (dict(task_classes=["Normal"]), "at least 2 distinct"),
        (dict(task_classes=["Normal", "No Finding", "COVID"]), "normal class twice"),
        (dict(task_classes="covid_like", n=0), "n \\(prompts per class\\) must be an integer >= 1"),
        (dict(task_classes="covid_like", draws=0), "draws must be an integer >= 1"),
        (dict(task_classes="covid_like", n=13), "class 'COVID' has 12 MedCLIP template prompts; cannot draw n=13"),
        (dict(task_classes="rsna_like", normal_sentences=["a b c d e"] * 3), "needs n=10 No-Finding sentences, only 3"),
        (dict(task_classes="rsna_like", normal_sentences="the lungs are clear"), "not one string"),
        (dict(task_classes="rsna_like", normal_sentences=["fine"] * 9 + [""]), "not non-empty strings"),
        (dict(task_classes="chexpert5", normal_sentences=["x"] * 10), "no normal class"),
    ],
)
def test_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        medclip_prompt_draws(**kwargs)
    with pytest.raises(ValueError, match="no MedCLIP prompt template for class 'Normal'"):
        template_candidates("Normal")


def test_the_templates_are_medclips_constants():
    assert list(mp.CHEXPERT_CLASS_PROMPTS) == list(CHEXPERT5_CLASSES)
    assert list(mp.CHEXPERT_CLASS_PROMPTS["Pleural Effusion"]) == ["severity", "location", "subtype"]
    assert mp.CHEXPERT_CLASS_PROMPTS["Consolidation"]["location"][5] == "at the right uppper lobe"  # sic
    assert (mp.DEFAULT_N, mp.DEFAULT_DRAWS, mp.DEFAULT_SEED) == (10, 5, 42)


# ------------------------------------------------------------------ max vs mean ensemble
class _TextModelHolder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.text_model = torch.nn.Linear(2, 2)


def test_max_and_mean_ensembles_differ_on_a_constructed_case(monkeypatch):
    table = {"a1": [1.0, 0.0], "a2": [-1.0, 0.0], "b1": [0.6, 0.8]}
    monkeypatch.setattr(
        "artmed.prompts.encode_sentences",
        lambda model, tok, texts, device, bs, amp=False: torch.tensor([table[s] for s in texts]),
    )
    model, cpu = _TextModelHolder(), torch.device("cpu")
    image, scale = torch.tensor([[1.0, 0.0]]), torch.tensor(10.0)
    bank = PromptBank({"A": ["a1", "a2"], "B": ["b1"]})
    mean = bank.logits(image, scale, model, None, cpu, 8)
    assert torch.allclose(mean, torch.tensor([[0.0, 6.0]]))  # B wins on the mean
    maxed = bank.logits(image, scale, model, None, cpu, 8, ensemble="max")
    assert torch.allclose(maxed, torch.tensor([[10.0, 6.0]]))  # A wins on the max
    assert torch.equal(PromptBank(bank.prompts, ensemble="max").logits(image, scale, model, None, cpu, 8), maxed)
    assert bank.embeddings(model, None, cpu, 8).shape == (3, 2)
    with pytest.raises(ValueError, match=r"ensemble must be one of \('mean', 'max'\), got 'median'"):
        PromptBank(bank.prompts, ensemble="median")
    with pytest.raises(ValueError, match="ensemble must be one of"):
        bank.logits(image, scale, model, None, cpu, 8, ensemble=True)


@pytest.fixture(scope="module")
def est():
    return MedCLIPEstimator.tiny(medclip_class_prompts("rsna_like", n=4, seed=0), image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (12, 1, SIZE, SIZE)).astype(np.float32)


def test_mean_ensemble_is_the_old_computation_bit_for_bit(est, x):
    assert est.ensemble == "mean" and est.get_params()["ensemble"] == "mean"
    pixels = torch.from_numpy(x)
    with torch.no_grad():
        image = est.model.encode_image(normalize_pixels(pixels)).float()
        old_matrix = torch.stack(
            [
                encode_sentences(est.model, est.tokenizer, s, est.device, est.batch_size).mean(0)
                for s in est.prompts.values()
            ]
        )
        old = est.model.scale().float() * image @ old_matrix.T
        assert torch.equal(est._logits(pixels), old)


def test_max_ensemble_through_the_estimator(est, x, tmp_path):
    mean = est.zero_shot_logits(x)
    maxed = MedCLIPEstimator(
        est.model, est.tokenizer, est.prompts, input_shape=est.input_shape, ensemble="max"
    ).zero_shot_logits(x)
    assert not np.allclose(mean, maxed) and (maxed >= mean - 1e-5).all()
    other = est.clone()
    other.set_params(ensemble="max")
    assert other.get_params()["ensemble"] == "max"
    np.testing.assert_allclose(other.zero_shot_logits(x), maxed, rtol=1e-6, atol=1e-6)
    assert other.with_prompts(other.prompts).ensemble == "max"
    with pytest.raises(ValueError, match="ensemble must be one of"):
        other.set_params(ensemble="sum")
    assert other.ensemble == "max"
    with pytest.raises(ValueError, match="ensemble must be one of"):
        MedCLIPEstimator(est.model, est.tokenizer, est.prompts, input_shape=est.input_shape, ensemble=None)
    other.save(tmp_path / "bundle")
    loaded = MedCLIPEstimator.load(tmp_path / "bundle")
    assert loaded.ensemble == "max"
    np.testing.assert_allclose(loaded.zero_shot_logits(x), maxed, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ scoring over draws
def test_score_over_prompt_draws_is_the_mean_and_std_of_per_draw_scores(est, x):
    targets = np.arange(len(x)) % 2
    triggered = np.clip(x + 0.3, 0, 1)
    before = est.prompts
    sets = medclip_prompt_draws(est.classes, draws=3, n=10, seed=7)
    res = score_over_prompt_draws(est, x, targets, triggered, target=0, draws=3, seed=7)
    assert est.prompts == before
    per = [score_estimator(est.with_prompts(s), x, targets, triggered, target=0) for s in sets]
    for key in ("ca", "f1", "asr", "asr_all", "ra"):
        vals = [p[key] for p in per]
        assert res[key] == pytest.approx(np.mean(vals)) and res[f"{key}_draw_std"] == pytest.approx(np.std(vals))
    assert res["draws"] == 3
    np.testing.assert_equal(
        score_over_prompt_draws(est, x, targets, prompt_sets=sets),
        score_over_prompt_draws(est, x, targets, draws=3, seed=7),
    )
    clean_only = score_over_prompt_draws(est, x, targets, prompt_sets=sets[:1])
    assert np.isnan(clean_only["asr"]) and np.isnan(clean_only["asr_draw_std"]) and clean_only["ca_draw_std"] == 0
    assert clean_only["ca"] == score_estimator(est.with_prompts(sets[0]), x, targets)["ca"]


def test_score_over_prompt_draws_refuses_sets_of_other_classes(est, x):
    with pytest.raises(ValueError, match=r"prompt set 0 has classes \['Normal', 'COVID'\]"):
        score_over_prompt_draws(est, x, np.zeros(len(x), int), prompt_sets=medclip_prompt_draws("covid_like"))
    with pytest.raises(ValueError, match="non-empty list"):
        score_over_prompt_draws(est, x, np.zeros(len(x), int), prompt_sets=[])
