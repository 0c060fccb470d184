"""EDA text augmentation (Wei & Zou 2019) as the released backdoor-MedCLIP training applies it, seeded and label-safe.

The released collator (``ImageTextContrastiveCollator(use_eda=True)``, textaugment 2.0.0's ``EDA``) augments every
training sentence with ONE operation drawn uniformly from synonym replacement (``n=1``: one word, every occurrence
of it, replaced by one synonym), random swap (``n=1``: one swap of two positions) and random deletion (``p=0.1``
per word; a one-word sentence is kept; if every word goes, one random word is kept). Random insertion is part of
EDA but not of the released call; ``EDA(operations=EDA_OPERATIONS)`` adds it (textaugment's ``random_insertion``:
a synonym of a random word inserted at a random position other than the end). Sentences are split on whitespace.

Differences from the release, on purpose:

- Synonyms come from the built-in ``SYNONYMS`` table (radiology-report and general words), not WordNet (which needs
  an NLTK download; artmed works offline). WordNet also offers finding words synonyms from unrelated senses; the
  table holds no label word.
- Label words are never altered: a word inside a match of the rule labeler's finding phrases, their "looks alike
  but is not" phrases, the size/shape qualifiers or the negation/uncertainty/scope cues (``artmed.data.labeler_rules``)
  is never replaced, deleted or moved, and no word is inserted between two label words. An augmented sentence whose
  labeler label still differs from the original's is redrawn (up to ``tries`` times, then the sentence is left
  unchanged), so an augmented sentence keeps the plain sentence's label, which the loss pairs it with.
- Draws come from the augmenter's own seeded ``numpy`` generator: the same seed and the same calls give the same
  output (the release uses Python's global ``random``, reseeded to 1 when textaugment's ``EDA()`` is built).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from artmed.data import labeler_rules as _lab

RELEASED_OPERATIONS: tuple[str, ...] = ("synonym_replacement", "random_swap", "random_deletion")
"""The operations the released collator draws from (uniformly, one per sentence)."""
EDA_OPERATIONS: tuple[str, ...] = RELEASED_OPERATIONS + ("random_insertion",)
"""All four EDA operations."""

_GROUPS: tuple[tuple[str, ...], ...] = (
    # radiology reports
    ("radiograph", "film", "image"),
    ("study", "examination", "exam"),
    ("view", "projection"),
    ("portable", "bedside"),
    ("visualized", "seen", "noted", "demonstrated", "identified", "appreciated"),
    ("demonstrates", "shows", "reveals"),
    ("demonstrate", "show", "reveal"),
    ("appears", "seems", "looks"),
    ("apparent", "evident", "visible"),
    ("prior", "previous", "earlier"),
    ("compared", "contrasted"),
    ("comparison", "reference"),
    ("position", "location", "placement"),
    ("terminates", "ends"),
    ("tip", "end"),
    ("region", "area", "zone"),
    ("regions", "areas", "zones"),
    ("upper", "superior"),
    ("lower", "inferior"),
    ("mild", "slight"),
    ("mildly", "slightly"),
    ("minimal", "minor"),
    ("small", "little"),
    ("tiny", "minute"),
    ("moderate", "medium"),
    ("markedly", "considerably"),
    ("substantial", "considerable"),
    ("expanded", "inflated"),
    ("aerated", "ventilated"),
    ("vasculature", "vessels"),
    ("contour", "outline"),
    ("contours", "outlines"),
    ("structures", "elements"),
    ("osseous", "bony"),
    ("evidence", "sign", "indication"),
    ("consistent", "compatible"),
    ("patient", "subject"),
    ("interval", "intervening"),
    ("placement", "insertion"),
    ("overlying", "superimposed"),
    ("projects", "lies"),
    ("again", "once more"),
    ("also", "additionally"),
    ("findings", "observations"),
    # general words
    ("seen", "observed"),
    ("present", "existing"),
    ("overall", "generally"),
    ("partially", "partly"),
    ("somewhat", "rather"),
    ("approximately", "about", "roughly"),
    ("measures", "spans"),
    ("measuring", "spanning"),
    ("big", "sizable"),
    ("increase", "rise"),
    ("decrease", "reduction"),
    ("improved", "better"),
)


def _table(groups: Iterable[Sequence[str]]) -> dict[str, tuple[str, ...]]:
    table: dict[str, list[str]] = {}
    for group in groups:
        for word in group:
            table.setdefault(word, []).extend(w for w in group if w != word and w not in table.get(word, ()))
    return {word: tuple(sorted(set(syns))) for word, syns in table.items()}


SYNONYMS: Mapping[str, tuple[str, ...]] = _table(_GROUPS)
"""The built-in synonym table: lower-case word -> its synonyms (a word appearing in several groups gets all)."""

_LABEL_PATTERNS: tuple[re.Pattern[str], ...] = (
    *(c.pattern for c in _lab._CONCEPTS),
    *(c.unmention for c in _lab._CONCEPTS if c.unmention is not None),
    *(p for q in _lab._ATTRIBUTES.values() for p in (q.negative, q.positive, q.uncertain)),
    _lab._PRE_NEG_UNC_BEFORE,
    _lab._PRE_NEG_UNC_AFTER,
    _lab._NEG_BEFORE,
    _lab._NEG_AFTER,
    _lab._UNC_BEFORE,
    _lab._UNC_AFTER,
    _lab._UNC_CLAUSE,
    _lab._CLAUSE_BREAK,
    _lab._SEPARATOR,
    _lab._CHF,
)
"""What the rule labeler keys on: finding phrases, look-alikes, size/shape qualifiers, cues and scope markers."""


def _normalise_keep_length(text: str) -> str:
    """The labeler's normalisation without collapsing whitespace, so that character offsets stay put."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9,;:?/'\-.\s]", " ", text)
    return re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)


def label_word_mask(words: Sequence[str]) -> list[bool]:
    """For each word of a whitespace-split sentence: whether it is a label word (part of a match of anything the
    rule labeler keys on: a finding phrase, a look-alike, a size/shape qualifier, a negation/uncertainty cue, a
    clause break or list separator)."""
    text = _normalise_keep_length(" ".join(words))
    covered = np.zeros(len(text) + 1, dtype=bool)
    for pattern in _LABEL_PATTERNS:
        for m in pattern.finditer(text):
            covered[m.start() : m.end()] = True
    mask, pos = [], 0
    for w in words:
        mask.append(bool(covered[pos : pos + len(w)].any()))
        pos += len(w) + 1
    return mask


@lru_cache(maxsize=1 << 16)
def _label_key(sentence: str) -> bytes:
    return _lab.label_sentence(sentence).tobytes()


class EDA:
    """Seeded, label-safe EDA: ``eda(sentences)`` returns one augmented sentence per sentence (see the module doc).

    ``seed`` (an int, SeedSequence or Generator) seeds the augmenter's own generator; the same seed and the same
    sequence of calls give the same sentences. ``operations`` are drawn uniformly per sentence (default: the
    released three); ``n_replace``/``n_swap``/``n_insert``/``p_delete`` are textaugment's ``n``/``p`` (defaults as
    the released call). ``synonyms`` replaces the built-in table. ``tries`` redraws per sentence whose labeler
    label would change (then the sentence is left as it is).
    """

    def __init__(
        self,
        seed: int | np.random.SeedSequence | np.random.Generator = 0,
        *,
        operations: Sequence[str] = RELEASED_OPERATIONS,
        n_replace: int = 1,
        n_swap: int = 1,
        n_insert: int = 1,
        p_delete: float = 0.1,
        synonyms: Mapping[str, Sequence[str]] | None = None,
        tries: int = 10,
    ) -> None:
        unknown = [op for op in operations if op not in EDA_OPERATIONS]
        if not operations or unknown:
            raise ValueError(
                f"operations must be a non-empty selection of {list(EDA_OPERATIONS)}, got {list(operations)}"
            )
        for name, n in (("n_replace", n_replace), ("n_swap", n_swap), ("n_insert", n_insert), ("tries", tries)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive integer, got {n!r}")
        if not 0.0 <= p_delete <= 1.0:
            raise ValueError(f"p_delete must be a probability in [0, 1], got {p_delete}")
        self.operations = tuple(operations)
        self.n_replace, self.n_swap, self.n_insert, self.p_delete, self.tries = (
            n_replace,
            n_swap,
            n_insert,
            p_delete,
            tries,
        )
        self.synonyms = SYNONYMS if synonyms is None else {k.lower(): tuple(v) for k, v in synonyms.items()}
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __call__(self, sentences: Sequence[str]) -> list[str]:
        if isinstance(sentences, str):
            raise TypeError("EDA takes a list of sentences; use .augment(sentence) for one")
        return [self.augment(s) for s in sentences]

    def augment(self, sentence: str) -> str:
        """One augmented version of ``sentence``: a random operation, redrawn while the label would change."""
        if not sentence.split():
            return sentence
        key = _label_key(sentence)
        for _ in range(self.tries):
            op = self.operations[int(self.rng.integers(len(self.operations)))]
            out = getattr(self, op)(sentence)
            if out == sentence or _label_key(out) == key:
                return out
        return sentence

    # ---- the operations (each keeps label words; see label_word_mask)
    def _synonyms(self, word: str) -> tuple[str, ...]:
        return self.synonyms.get(word.lower(), ())

    def synonym_replacement(self, sentence: str) -> str:
        """Replace ``n_replace`` distinct non-label words that have synonyms (every occurrence of each) by a random
        synonym each."""
        words = sentence.split()
        protected = label_word_mask(words)
        candidates = sorted({w for w, p in zip(words, protected) if not p and self._synonyms(w)})
        if not candidates:
            return sentence
        picked = [candidates[i] for i in self.rng.permutation(len(candidates))[: self.n_replace]]
        for word in picked:
            syns = self._synonyms(word)
            new = syns[int(self.rng.integers(len(syns)))]
            words = [new if w == word and not p else w for w, p in zip(words, protected)]
        return " ".join(words)

    def random_swap(self, sentence: str) -> str:
        """Swap two non-label words, ``n_swap`` times (textaugment: up to 4 draws for a second, different
        position, else that swap is skipped)."""
        words = sentence.split()
        free = [i for i, p in enumerate(label_word_mask(words)) if not p]
        if len(free) < 2:
            return sentence
        for _ in range(self.n_swap):
            a = free[int(self.rng.integers(len(free)))]
            for _attempt in range(4):
                b = free[int(self.rng.integers(len(free)))]
                if b != a:
                    words[a], words[b] = words[b], words[a]
                    break
        return " ".join(words)

    def random_deletion(self, sentence: str) -> str:
        """Delete each non-label word with probability ``p_delete``; a one-word sentence stays; if every word would
        go, one random word is kept."""
        words = sentence.split()
        if len(words) == 1:
            return words[0]
        protected = label_word_mask(words)
        draws = self.rng.uniform(0.0, 1.0, size=len(words))
        kept = [w for w, p, r in zip(words, protected, draws) if p or r > self.p_delete]
        if not kept:
            return words[int(self.rng.integers(len(words)))]
        return " ".join(kept)

    def random_insertion(self, sentence: str) -> str:
        """Insert a synonym of a random non-label word that has one at a random position (not after the last word,
        nor between two label words), ``n_insert`` times."""
        words = sentence.split()
        for _ in range(self.n_insert):
            mask = label_word_mask(words)
            sources = [w for w, p in zip(words, mask) if not p and self._synonyms(w)]
            if not sources:
                break
            syns = self._synonyms(sources[int(self.rng.integers(len(sources)))])
            slots = [i for i in range(len(words)) if i == 0 or not (mask[i - 1] and mask[i])]
            words.insert(slots[int(self.rng.integers(len(slots)))], syns[int(self.rng.integers(len(syns)))])
        return " ".join(words)
