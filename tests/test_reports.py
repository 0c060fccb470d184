"""Generated report sentences: size, variety, and labels that agree with the words."""

import re

import numpy as np
import pytest

from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import TextPool
from artmed.data.reports import NORMAL_STATEMENTS, VOCABULARY, finding_phrases, make_text_pool, report_corpus

COL = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
NEGATION = re.compile(r"\b(no|not|without|negative for|removed|normal|intact|sharp|unremarkable)\b", re.I)
UNCERTAINTY = re.compile(
    r"\b(possible|questionable|may|cannot|suspicious|concerning|borderline|blunt\w*|not excluded)\b", re.I
)
# Words that can only come from a mention of that finding in our vocabulary.
KEYWORDS = {
    "Enlarged Cardiomediastinum": r"mediastin",
    "Cardiomegaly": r"cardiomegaly|cardiac enlargement|enlarged (heart|cardiac)|heart is .*enlarged|"
    r"cardiac silhouette is .*enlarged|heart is increased in size|borderline",
    "Lung Lesion": r"nodule|mass\b",
    "Lung Opacity": r"opacit|opacification",
    "Edema": r"edema",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelectasis",
    "Pneumothorax": r"pneumothora",
    "Pleural Effusion": r"effusion|pleural fluid|blunt",
    "Pleural Other": r"pleural (thickening|scarring|plaque)",
    "Fracture": r"fracture",
    "Support Devices": r"tube|\bline\b|catheter|pacemaker|wires",
}


@pytest.fixture(scope="module")
def corpus():
    return report_corpus()


def test_corpus_is_large_distinct_and_fixed(corpus):
    sentences, labels, kinds = corpus
    assert len(sentences) >= 500 and len(set(sentences)) == len(sentences)
    assert labels.shape == (len(sentences), 14) and labels.dtype == np.float32
    assert set(np.unique(labels)) == {-1.0, 0.0, 1.0}
    again = report_corpus()
    assert again[0] == sentences and np.array_equal(again[1], labels)
    for name in CHEXPERT_LABELS[1:]:
        assert (labels[:, COL[name]] == 1).sum() >= 20, name
    for name in CHEXPERT_LABELS[1:13]:
        assert (labels[:, COL[name]] == -1).sum() >= 5, name
    assert 0.15 < (labels[:, 0] == 1).mean() < 0.5
    assert all(s[0].isupper() and s.endswith(".") and "  " not in s for s in sentences)


def test_no_finding_rule(corpus):
    _, labels, _ = corpus
    abnormal = (labels[:, 1:13] != 0).any(axis=1)
    np.testing.assert_array_equal(labels[:, 0] == 1, ~abnormal)


def test_single_finding_sentences_label_only_that_finding(corpus):
    sentences, labels, kinds = corpus
    for s, y, kind in zip(sentences, labels, kinds):
        if kind.startswith(("positive:", "uncertain:", "negative:")):
            polarity, name = kind.split(":")
            others = np.delete(y[1:], COL[name] - 1)
            assert not others.any(), s
            expected = {"positive": 1.0, "uncertain": -1.0, "negative": 0.0}[polarity]
            assert y[COL[name]] == expected, s
            if polarity != "negative":  # negative statements may be generic ("No acute osseous abnormality.")
                assert re.search(KEYWORDS[name], s, re.I), s
        if kind == "normal" or kind.startswith("negative:"):
            assert y[0] == 1 and not y[1:13].any(), s
        if kind.startswith("uncertain:"):
            assert UNCERTAINTY.search(s), s


def test_labels_agree_with_the_words(corpus):
    """A finding mentioned without negation or uncertainty is 1; one never mentioned is 0."""
    sentences, labels, _ = corpus
    for s, y in zip(sentences, labels):
        for name, pattern in KEYWORDS.items():
            mentioned = re.search(pattern, s, re.I)
            v = y[COL[name]]
            if not mentioned:
                assert v == 0, (s, name)
            elif v == 0:
                assert NEGATION.search(s), (s, name)
            elif v == -1:
                assert UNCERTAINTY.search(s), (s, name)


def test_examples_from_the_brief(corpus):
    sentences, labels, _ = corpus
    table = dict(zip(sentences, labels))
    y = table["The heart is enlarged."]
    assert y[COL["Cardiomegaly"]] == 1 and (np.delete(y, COL["Cardiomegaly"]) == 0).all()
    y = table["No pleural effusion or pneumothorax."]
    assert y[0] == 1 and not y[1:].any()
    y = table["Possible early pneumonia."]
    assert y[COL["Pneumonia"]] == -1 and y[0] == 0
    assert table["The lungs are clear."][0] == 1
    assert table["Heart size is normal."][0] == 1


def test_agrees_with_the_rule_labeler(corpus):
    labeler = pytest.importorskip("artmed.data.labeler")
    sentences, labels, _ = corpus
    agree = np.mean([np.array_equal(labeler.label_sentence(s), y) for s, y in zip(sentences, labels)])
    assert agree >= 0.97


def test_make_text_pool_sampling():
    full = make_text_pool()
    assert isinstance(full, TextPool) and len(full) == len(report_corpus()[0])
    assert sorted(full.sentences) == sorted(report_corpus()[0])
    a, b = make_text_pool(300, seed=1), make_text_pool(300, seed=1)
    assert a.sentences == b.sentences and np.array_equal(a.labels, b.labels)
    assert a.sentences != make_text_pool(300, seed=2).sentences
    assert len(set(a.sentences)) == 300
    big = make_text_pool(len(full) + 50, seed=0)
    assert len(big) == len(full) + 50
    table = dict(zip(full.sentences, map(tuple, full.labels)))
    assert all(table[s] == tuple(y) for s, y in zip(big.sentences, big.labels))
    with pytest.raises(ValueError, match="positive"):
        make_text_pool(0)


def test_finding_phrases():
    for name in CHEXPERT_LABELS:
        phrases = finding_phrases(name)
        assert len(phrases) >= 3 and all(p and not p.endswith(".") for p in phrases), name
    assert "moderate pleural effusion on the left" in finding_phrases("Pleural Effusion")
    assert len(finding_phrases("No Finding")) == len(NORMAL_STATEMENTS)
    with pytest.raises(ValueError, match="unknown finding"):
        finding_phrases("Covid")
    assert set(VOCABULARY) == set(CHEXPERT_LABELS[1:])
