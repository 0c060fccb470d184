"""EDA text augmentation (artmed.data.eda) and training with it (train_unpaired / fit(eda=True))."""

import numpy as np
import pytest

import artmed.training as training
from artmed import MedCLIPEstimator
from artmed.constants import CHEXPERT_LABELS
from artmed.data.eda import EDA, EDA_OPERATIONS, RELEASED_OPERATIONS, SYNONYMS, label_word_mask
from artmed.data.labeler import label_sentence
from artmed.data.reports import report_corpus

SENTENCES = [
    "there is no pleural effusion or pneumothorax seen on the prior radiograph .",
    "the radiograph demonstrates a small opacity in the right lower lobe .",
    "possible mild pulmonary edema is noted on this portable view .",
    "the endotracheal tube tip is in standard position above the carina .",
    "heart size is normal and the lungs are clear .",
    "cannot exclude a small left pleural effusion on the frontal view .",
]


def corpus(n=400):
    sentences = report_corpus()[0]
    return sentences[:: max(1, len(sentences) // n)][:n]


def protected_words(sentence):
    words = sentence.split()
    return [w for w, p in zip(words, label_word_mask(words)) if p]


def test_same_seed_same_output_and_other_seeds_differ():
    texts = corpus()
    a, b, c = EDA(3)(texts), EDA(3)(texts), EDA(4)(texts)
    assert a == b
    assert a != c
    assert sum(x != y for x, y in zip(texts, a)) > len(texts) // 2  # it does augment
    gen = EDA(np.random.default_rng(3))
    assert gen(texts) == a  # a Generator seeds it the same way as its seed


def test_released_operations_and_validation():
    assert RELEASED_OPERATIONS == ("synonym_replacement", "random_swap", "random_deletion")
    assert EDA().operations == RELEASED_OPERATIONS
    assert set(EDA_OPERATIONS) == set(RELEASED_OPERATIONS) | {"random_insertion"}
    with pytest.raises(ValueError, match="operations"):
        EDA(operations=["back_translation"])
    with pytest.raises(ValueError, match="operations"):
        EDA(operations=[])
    with pytest.raises(ValueError, match="p_delete"):
        EDA(p_delete=1.5)
    with pytest.raises(ValueError, match="n_swap"):
        EDA(n_swap=0)
    with pytest.raises(TypeError):
        EDA()("one sentence given as a string")


def test_label_word_mask_marks_findings_and_cues_only():
    words = SENTENCES[0].split()
    marked = {w for w, p in zip(words, label_word_mask(words)) if p}
    assert marked == {"no", "effusion", "or", "pneumothorax"}
    words = "heart size is normal and the lungs are clear .".split()
    assert {"heart", "size", "normal", "clear"} <= {w for w, p in zip(words, label_word_mask(words)) if p}
    assert not any(label_word_mask("the radiograph was obtained today".split()))


@pytest.mark.parametrize("operations", [RELEASED_OPERATIONS, EDA_OPERATIONS])
def test_augmented_sentences_keep_labels_and_label_words(operations):
    texts = corpus() + SENTENCES
    eda = EDA(0, operations=operations)
    for _ in range(2):
        for before, after in zip(texts, eda(texts)):
            np.testing.assert_array_equal(label_sentence(after), label_sentence(before), err_msg=f"{before} -> {after}")
            words = iter(after.split())
            assert all(w in words for w in protected_words(before)), (before, after)  # kept, in order


def test_no_label_word_is_ever_a_synonym_key():
    for word, synonyms in SYNONYMS.items():
        assert word not in synonyms and synonyms
        for w in (word, *synonyms):
            assert not any(label_word_mask(w.split())), w


def test_synonym_replacement_replaces_one_word_everywhere():
    eda = EDA(1, operations=["synonym_replacement"])
    sentence = "the prior radiograph and the prior study show a small opacity ."
    seen = set()
    for _ in range(30):
        out = eda.synonym_replacement(sentence).split()
        words = sentence.split()
        assert len(out) == len(words)
        changed = {w for w, o in zip(words, out) if w != o}
        assert len(changed) == 1
        word = changed.pop()
        replacements = {o for w, o in zip(words, out) if w == word}
        assert len(replacements) == 1 and replacements <= set(SYNONYMS[word])  # every occurrence, one synonym
        seen.add(word)
    assert {"prior", "radiograph", "study", "small"} & seen and "opacity" not in seen
    assert eda.synonym_replacement("no pleural effusion or pneumothorax") == "no pleural effusion or pneumothorax"


def test_random_swap_swaps_two_free_words():
    eda = EDA(2)
    sentence = SENTENCES[1]
    words = sentence.split()
    mask = label_word_mask(words)
    for _ in range(30):
        out = eda.random_swap(sentence).split()
        assert sorted(out) == sorted(words)
        moved = [i for i, (a, b) in enumerate(zip(words, out)) if a != b]
        assert len(moved) in (0, 2) and not any(mask[i] for i in moved)
    assert eda.random_swap("no effusion") == "no effusion"  # nothing free to swap


def test_random_deletion_deletes_free_words_only():
    words = SENTENCES[0].split()
    eda = EDA(3, p_delete=0.5)
    for _ in range(30):
        out = eda.random_deletion(SENTENCES[0]).split()
        it = iter(words)
        assert all(w in it for w in out)  # a subsequence
        assert protected_words(" ".join(out)) == protected_words(SENTENCES[0])
    assert EDA(0, p_delete=0.0).random_deletion(SENTENCES[0]) == SENTENCES[0]
    assert EDA(0, p_delete=1.0).random_deletion(SENTENCES[0]).split() == protected_words(SENTENCES[0])
    assert EDA(0, p_delete=1.0).random_deletion("lungs") == "lungs"  # one word stays (textaugment)
    kept = EDA(0, p_delete=1.0).random_deletion("the film was obtained today")
    assert kept in "the film was obtained today".split()  # all deleted: one random word is kept


def test_random_insertion_inserts_a_synonym_before_the_end():
    eda = EDA(4, operations=["random_insertion"])
    sentence = "the prior radiograph shows a small opacity"
    words = sentence.split()
    for _ in range(30):
        out = eda.random_insertion(sentence).split()
        assert len(out) >= len(words) + 1
        assert out[-1] == words[-1]
        extra = list(out)
        for w in words:
            extra.remove(w)
        assert any(" ".join(extra) in SYNONYMS[w] for w in words if w in SYNONYMS)


def test_a_label_changing_table_is_rejected():
    eda = EDA(0, operations=["synonym_replacement"], synonyms={"seen": ["absent"]})
    sentence = "pleural effusion is seen"
    assert eda.synonym_replacement(sentence) == "pleural effusion is absent"  # the operation alone flips the label
    assert eda.augment(sentence) == sentence  # so augment redraws and gives up
    np.testing.assert_array_equal(label_sentence(eda.augment(sentence)), label_sentence(sentence))


# ---- training with EDA
SIZE = 32
PROMPTS = {"left": ["left lung opacity"], "right": ["right lung opacity"]}
TEXTS = [
    "the prior radiograph shows a small opacity in the left lung",
    "there is a small left sided opacity on the frontal view",
    "the portable radiograph shows a small opacity in the right lung",
    "there is a small right sided opacity on the frontal view",
]


def _labels(classes):
    y = np.zeros((len(classes), 14), np.float32)
    y[
        np.arange(len(classes)),
        np.where(
            np.asarray(classes) == 0, CHEXPERT_LABELS.index("Cardiomegaly"), CHEXPERT_LABELS.index("Pleural Effusion")
        ),
    ] = 1.0
    return y


def _fit(**kwargs):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 1, SIZE, SIZE)).astype(np.float32)
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1)
    return est.fit(
        x,
        _labels(rng.integers(0, 2, 16)),
        TEXTS,
        _labels([0, 0, 1, 1]),
        steps=3,
        batch_size=8,
        lr=1e-3,
        seed=5,
        verbose=False,
        **kwargs,
    )["loss"]


def test_training_with_eda_is_seeded_and_the_default_is_unchanged(monkeypatch):
    plain = _fit()
    assert _fit(eda=False) == plain
    calls = []
    original = training.medclip_loss

    def spy(*args, **kwargs):
        calls.append(len(args) + len(kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "medclip_loss", spy)
    with_eda = _fit(eda=True)
    assert calls == [6, 6, 6]  # the augmented embeddings reach the loss every step
    assert with_eda != plain
    assert _fit(eda=True) == with_eda
    assert _fit(eda=EDA(123)) != with_eda  # an explicit augmenter with another seed


def test_eda_loss_is_the_mean_of_plain_and_augmented(monkeypatch):
    seen = {}
    original = training.medclip_loss

    def spy(img, txt, y_img, y_txt, scale, aug=None):
        seen["plain"] = original(img, txt, y_img, y_txt, scale).item()
        seen["aug"] = original(img, aug, y_img, y_txt, scale).item()
        out = original(img, txt, y_img, y_txt, scale, aug)
        seen["both"] = out.item()
        return out

    monkeypatch.setattr(training, "medclip_loss", spy)
    _fit(eda=True)
    assert seen["both"] == pytest.approx((seen["plain"] + seen["aug"]) / 2, rel=1e-6)
    assert seen["plain"] != seen["aug"]
