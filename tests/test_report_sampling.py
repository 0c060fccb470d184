"""The released text side: sentence cleaning, own-report sampling with its fallbacks, training with the sampler."""

import math

import numpy as np
import pytest

import artmed.training as training
from artmed import MedCLIPEstimator
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import TextPool
from artmed.data.labeler import label_sentence
from artmed.data.report_sampling import (
    NO_FINDING,
    ReportSampler,
    clean_sentence_labels,
    prompt_sentences,
    sentence_label_lookup,
    split_report_into_segments,
    wordpunct_tokenize,
)

EFF, PTX, CARDIO = (CHEXPERT_LABELS.index(n) for n in ("Pleural Effusion", "Pneumothorax", "Cardiomegaly"))


def vec(*positive, uncertain=()):
    y = np.zeros(14, np.float32)
    y[list(positive)] = 1.0
    y[list(uncertain)] = -1.0
    if not (y[1:13] != 0).any():
        y[0] = 1.0
    return y


def test_wordpunct_tokenize_is_nltks():
    assert wordpunct_tokenize("No pleural-effusion, x2.5 cm!") == [
        "No",
        "pleural",
        "-",
        "effusion",
        ",",
        "x2",
        ".",
        "5",
        "cm",
        "!",
    ]


def test_split_report_into_segments_as_released():
    report = (
        "FINDINGS: The lungs are clear. Heart size is normal.\nNo pleural effusion. "
        "1. Small left pleural effusion is seen 2.Mild cardiomegaly is present here. "
        "3. There is mild pulmonary edema."
    )
    assert split_report_into_segments(report) == [
        "findings : the lungs are clear",  # cut at ". ", lower case, punctuation is a token
        # "heart size is normal" and "no pleural effusion ." have 4 tokens: dropped (more than 4 are kept)
        "small left pleural effusion is seen",
        "ild cardiomegaly is present here",  # the list-mark regex eats the character after "2." (released)
        "there is mild pulmonary edema .",  # the last sentence keeps its period
    ]


def test_split_report_handles_missing_and_non_ascii():
    assert split_report_into_segments(None) == []
    assert split_report_into_segments(math.nan) == []
    assert split_report_into_segments("") == []
    assert split_report_into_segments("the lungs are clear caf\u00e9 today") == ["the lungs are clear caf today"]
    assert split_report_into_segments("the \u00e9\u00e9 lungs are clear") == []  # 4 tokens once ASCII-only
    assert split_report_into_segments("word\ufffd\ufffdword and more words here") == ["word word and more words here"]


TABLE = TextPool(
    [
        "Small left pleural effusion is seen.",
        "Small left pleural effusion is seen.",  # raw duplicate
        "ok",
        "No pneumothorax.",  # too short (2 characters; 3 tokens)
        "There is a small right pneumothorax. The heart is enlarged in size.",  # two sentences: dropped
        "There is a small right pneumothorax",
        "The heart size is enlarged here",
        "The lungs are clear without focal consolidation",
        "No acute cardiopulmonary process is seen",
        "SMALL LEFT PLEURAL EFFUSION IS SEEN",
    ],  # the same cleaned sentence as row 0, other labels
    np.stack(
        [
            vec(EFF),
            vec(EFF),
            vec(),
            vec(),
            vec(PTX, CARDIO),
            vec(PTX),
            vec(CARDIO),
            vec(),
            vec(),
            vec(EFF, uncertain=[PTX]),
        ]
    ),
)


def test_clean_sentence_labels_as_released():
    clean = clean_sentence_labels(TABLE)
    assert clean.sentences == [
        "small left pleural effusion is seen .",
        "there is a small right pneumothorax",
        "the heart size is enlarged here",
        "the lungs are clear without focal consolidation",
        "no acute cardiopulmonary process is seen",
        "small left pleural effusion is seen",
    ]
    np.testing.assert_array_equal(clean.labels, TABLE.labels[[0, 5, 6, 7, 8, 9]])
    lookup = sentence_label_lookup(
        TextPool(clean.sentences + [clean.sentences[0]], np.vstack([clean.labels, vec(CARDIO)[None]]))
    )
    np.testing.assert_array_equal(lookup[clean.sentences[0]], vec(CARDIO))  # the last row wins (dict(zip(...)))
    with pytest.raises(ValueError, match="survives"):
        clean_sentence_labels(TextPool(["No effusion."], vec()[None]))


def test_prompt_sentences_take_up_to_n_per_label_without_duplicate_rows():
    pool = TextPool([f"sentence {i}" for i in range(30)], np.stack([vec(EFF)] * 10 + [vec(PTX)] * 3 + [vec()] * 17))
    prompts = prompt_sentences(pool, n=5, seed=0)
    labels = prompts.labels
    assert (labels[:, EFF] == 1).sum() == 5 and (labels[:, PTX] == 1).sum() == 3 and (labels[:, 0] == 1).sum() == 5
    assert len(set(prompts.sentences)) == len(prompts) == 13
    assert prompt_sentences(pool, n=5, seed=0).sentences == prompts.sentences
    assert prompt_sentences(pool, n=5, seed=1).sentences != prompts.sentences
    twice = TextPool(["a b c d e", "a b c d e"], np.stack([vec(EFF, PTX), vec(EFF, PTX)]))
    assert prompt_sentences(twice).sentences == ["a b c d e"]  # positive for two labels, one row kept


REPORTS = [
    "There is a small right pneumothorax. The heart size is enlarged here. An unknown new sentence is here",
    None,  # no report
    "The lungs are clear without focal consolidation",
    "",  # an empty report: no sentences either
    "Heart normal. No effusion.",  # only short sentences: none kept
]
IMAGE_LABELS = np.stack([vec(PTX, CARDIO), vec(EFF), vec(), np.zeros(14, np.float32), vec(CARDIO, uncertain=[PTX])])


def test_own_report_sentences_only_with_table_labels():
    sampler = ReportSampler.from_reports(REPORTS, TABLE, seed=0)
    assert len(sampler) == 5 and sampler.without_report == 3
    assert sampler.image_sentences[0] == [
        "there is a small right pneumothorax",
        "the heart size is enlarged here",
        "an unknown new sentence is here",
    ]
    assert sampler.lookup_hits == pytest.approx(3 / 4)
    rng = np.random.default_rng(0)
    drawn = set()
    for _ in range(60):
        texts, labels = sampler.sample([0, 2, 0], IMAGE_LABELS[[0, 2, 0]], rng)
        assert texts[0] in sampler.image_sentences[0] and texts[2] in sampler.image_sentences[0]
        assert texts[1] == "the lungs are clear without focal consolidation"
        drawn.update(texts[::2])
        for text, label in zip(texts, labels):
            expected = {
                "there is a small right pneumothorax": vec(PTX),
                "the heart size is enlarged here": vec(CARDIO),
                "an unknown new sentence is here": NO_FINDING,  # not in the table: No Finding (released)
                "the lungs are clear without focal consolidation": vec(),
            }[text]
            np.testing.assert_array_equal(label, expected)
    assert drawn == set(sampler.image_sentences[0])  # uniform over the image's own sentences


def test_labeler_labels_instead_of_lookup():
    sampler = ReportSampler.from_reports(REPORTS, TABLE, labels="labeler")
    assert sampler.lookup_hits is None
    for sents, labels in zip(sampler.image_sentences, sampler.image_sentence_labels):
        for s, y in zip(sents, labels):
            np.testing.assert_array_equal(y, label_sentence(s))
    with pytest.raises(ValueError, match="labels"):
        ReportSampler.from_reports(REPORTS, TABLE, labels="csv")


def test_fallbacks_for_images_without_report_sentences():
    sampler = ReportSampler.from_reports(REPORTS, TABLE, seed=0)
    rng = np.random.default_rng(1)
    table = dict(zip(sampler.table.sentences, map(tuple, sampler.table.labels)))
    for _ in range(40):
        texts, labels = sampler.sample([1, 3, 4], IMAGE_LABELS[[1, 3, 4]], rng)
        # image 1 (Pleural Effusion): a prompt sentence positive for effusion
        assert texts[0] in sampler.prompts.sentences and labels[0][EFF] == 1
        # image 3 (all-zero labels): a table sentence with No Finding
        assert labels[1][0] > 0 and table[texts[1]] == tuple(labels[1])
        # image 4 (Cardiomegaly, uncertain pneumothorax): a prompt sentence sharing a finding (both 1 or both -1)
        assert (labels[2][1:] * IMAGE_LABELS[4][1:] > 0).any()
    lonely = np.zeros(14, np.float32)
    lonely[CHEXPERT_LABELS.index("Fracture")] = 1.0  # no prompt sentence has a fracture: a No Finding prompt
    for _ in range(10):
        text, label = sampler.fallback(lonely, rng)
        assert text in sampler.prompts.sentences and label[0] == 1


def test_sampling_is_seeded_and_checked():
    sampler = ReportSampler.from_reports(REPORTS, TABLE, seed=0)
    rows = [0, 1, 2, 3, 4, 0, 1]
    draw = lambda seed: sampler.sample(rows, IMAGE_LABELS[rows], np.random.default_rng(seed))[0]  # noqa: E731
    assert draw(5) == draw(5)
    assert any(draw(5) != draw(s) for s in range(6, 12))
    with pytest.raises(ValueError, match="labels of shape"):
        ReportSampler([["a b c d e"]], [np.zeros((2, 14))], TABLE)
    with pytest.raises(ValueError, match="label arrays"):
        ReportSampler([["a b c d e"]], [], TABLE)


# ---- training with the sampler
SIZE = 32
PROMPTS = {"left": ["left lung opacity"], "right": ["right lung opacity"]}


def test_training_pairs_each_image_with_its_own_report(monkeypatch):
    n = 12
    reports = [
        f"Image number {i} shows a small right pneumothorax. Image number {i} has a normal heart size today."
        if i % 3
        else None
        for i in range(n)
    ]
    labels = np.stack([vec(PTX) if i % 2 else vec() for i in range(n)])
    sampler = ReportSampler.from_reports(reports, TABLE, seed=0)
    batches = []
    original = training.tokenize

    def spy(tokenizer, texts, device):
        batches.append(list(texts))
        return original(tokenizer, texts, device)

    monkeypatch.setattr(training, "tokenize", spy)
    x = np.random.default_rng(0).uniform(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32)
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1)
    rows = []
    monkeypatch.setattr(sampler, "sample", lambda r, y, rng, f=sampler.sample: (rows.append(list(r)), f(r, y, rng))[1])
    history = est.fit(x, labels, TABLE, steps=4, batch_size=4, lr=1e-3, seed=3, verbose=False, report_sampler=sampler)
    assert len(history["loss"]) == 4 and len(batches) == 4
    fallbacks = set(clean_sentence_labels(TABLE).sentences)
    for texts, idx in zip(batches, rows):
        assert len(texts) == 4
        for text, i in zip(texts, idx):
            if reports[i] is None:
                assert text in fallbacks
            else:
                assert text in sampler.image_sentences[i] and f"number {i} " in text
    with pytest.raises(ValueError, match="covers 5 images"):
        est.fit(
            x,
            labels,
            TABLE,
            steps=1,
            batch_size=4,
            verbose=False,
            report_sampler=ReportSampler.from_reports(REPORTS, TABLE),
        )
