"""The released text side of backdoor-MedCLIP training: report sentences cleaned as released, and each training image
paired with a random sentence of its OWN report (``ImageTextContrastiveDataset`` in the released
``medclip/dataset.py``), with the released fallbacks.

Released behaviour reproduced here:

- ``split_report_into_segments`` (``_split_report_into_segment``): newlines become spaces; the text is cut at
  numbered-list marks (regex ``[0-9]+\\.+[^0-9]``, which also eats the character after the mark) and at ". "; each
  piece is lower-cased and split into word/punctuation tokens (NLTK's ``wordpunct_tokenize``: ``\\w+|[^\\w\\s]+``),
  non-ASCII characters are dropped from tokens, and pieces of more than 4 tokens are kept, tokens joined by spaces
  (punctuation counts as a token: "no pleural effusion." is 4 tokens and dropped).
- ``clean_sentence_labels`` (``_preprocess_sentence_label``): the sentence table is de-duplicated on its raw text
  (first kept), rows of at most 2 characters dropped, every row segmented as above and kept only when it gives
  exactly one segment, which becomes its sentence. De-duplication is on the raw text, so cleaned sentences may
  repeat (as released).
- ``prompt_sentences`` (``_build_prompt_sentence``): up to 200 sentences positive for each of the 14 labels, drawn once,
  duplicate rows removed: the pool of the label-matched fallback.
- ``ReportSampler.sample`` (``__getitem__``/``sample_sent_prompts``): an image with report sentences gets one of them
  uniformly; its label is the table's label of that sentence, or No Finding (``[1, 0, ..., 0]``) when the table
  lacks it (``labels="lookup"``; ``labels="labeler"`` labels it with ``artmed.data.labeler`` instead). An image
  without report sentences gets a fallback: with all-zero labels, a random table sentence with No Finding > 0;
  otherwise a random prompt sentence sharing a finding with the image (product of labels > 0 in a column other
  than No Finding: both positive or both uncertain), else a prompt sentence with No Finding = 1.

Differences: draws are seeded (``numpy`` generators, not Python's global ``random`` and pandas' unseeded ``sample``);
the released fallback for an unlabelled image takes ``report.values[0][0]``, the first CHARACTER of the sampled
sentence (a bug), artmed takes the sentence; where the release would fail on an empty fallback set (``.sample()`` of
no rows) artmed falls back to the table's No Finding sentences, then to any table sentence.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence

import numpy as np

from artmed.constants import NUM_LABELS
from artmed.data.dataset import TextPool
from artmed.data.labeler import label_sentence

_LIST_MARK = re.compile(r"[0-9]+\.+[^0-9]")
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
NO_FINDING: np.ndarray = np.eye(NUM_LABELS, dtype=np.float32)[0]
"""The released label of a report sentence missing from the sentence table: No Finding only."""


def wordpunct_tokenize(text: str) -> list[str]:
    """NLTK's ``wordpunct_tokenize``: runs of word characters and runs of other non-space characters."""
    return _WORDPUNCT.findall(text)


def split_report_into_segments(report: str | None) -> list[str]:
    """A raw report cut into the released training sentences (lower case, tokens joined by spaces, > 4 tokens)."""
    if report is None or (isinstance(report, float) and math.isnan(report)):
        return []
    pieces = [s for part in _LIST_MARK.split(report.replace("\n", " ")) for s in part.split(". ")]
    out = []
    for piece in pieces:
        if not piece:
            continue
        tokens = wordpunct_tokenize(piece.replace("\ufffd\ufffd", " ").lower())
        if len(tokens) <= 1:
            continue
        kept = [t for t in (t.encode("ascii", "ignore").decode("ascii") for t in tokens) if t]
        if len(kept) > 4:
            out.append(" ".join(kept))
    return out


def clean_sentence_labels(pool: TextPool) -> TextPool:
    """The released cleaning of MedCLIP's sentence table (``sentence-label.csv`` as a TextPool): raw duplicates
    dropped, then each sentence segmented and kept only if it is exactly one released sentence."""
    seen: set[str] = set()
    sentences: list[str] = []
    rows: list[int] = []
    for i, raw in enumerate(pool.sentences):
        if raw in seen:
            continue
        seen.add(raw)
        if len(raw) <= 2:
            continue
        segments = split_report_into_segments(raw)
        if len(segments) == 1:
            sentences.append(segments[0])
            rows.append(i)
    if not sentences:
        raise ValueError("no sentence of the pool survives the released cleaning (one segment of more than 4 tokens)")
    return TextPool(sentences, pool.labels[np.asarray(rows, dtype=np.int64)])


def sentence_label_lookup(pool: TextPool) -> dict[str, np.ndarray]:
    """Sentence -> label vector (the last row wins for a repeated sentence, as the release's ``dict(zip(...))``)."""
    return {s: pool.labels[i] for i, s in enumerate(pool.sentences)}


def prompt_sentences(pool: TextPool, n: int = 200, seed: int | np.random.Generator = 0) -> TextPool:
    """Up to ``n`` sentences with label 1 for each of the 14 labels (all of them where fewer), in label order,
    identical (sentence, labels) rows removed: the released pool of label-matched fallback sentences."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    picked: list[int] = []
    for j in range(NUM_LABELS):
        rows = np.flatnonzero(pool.labels[:, j] == 1)
        picked += rows.tolist() if len(rows) < n else rows[np.sort(rng.choice(len(rows), n, replace=False))].tolist()
    seen: set[tuple[str, bytes]] = set()
    keep = []
    for i in picked:
        key = (pool.sentences[i], pool.labels[i].tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return pool.subset(np.asarray(keep, dtype=np.int64))


class ReportSampler:
    """Pairs each training image with a random sentence of its own report (released fallbacks otherwise).

    ``image_sentences[i]``/``image_sentence_labels[i]``: image i's report sentences and their (k_i, 14) labels
    (k_i may be 0). ``table``: the (cleaned) sentence table the fallbacks draw from; ``seed`` draws the prompt
    pool (``n_prompts`` per label) once. Build it with ``from_reports``. ``train_unpaired(report_sampler=...)``
    calls ``sample`` with the global image batch every step.
    """

    def __init__(
        self,
        image_sentences: Sequence[Sequence[str]],
        image_sentence_labels: Sequence[np.ndarray],
        table: TextPool,
        *,
        seed: int = 0,
        n_prompts: int = 200,
    ) -> None:
        if len(image_sentences) != len(image_sentence_labels):
            raise ValueError(f"{len(image_sentences)} sentence lists but {len(image_sentence_labels)} label arrays")
        self.image_sentences = [list(s) for s in image_sentences]
        self.image_sentence_labels = []
        for i, (sents, labels) in enumerate(zip(self.image_sentences, image_sentence_labels)):
            labels = (
                np.asarray(labels, dtype=np.float32).reshape(-1, NUM_LABELS)
                if len(sents)
                else np.zeros((0, NUM_LABELS), np.float32)
            )
            if labels.shape != (len(sents), NUM_LABELS):
                raise ValueError(f"image {i}: {len(sents)} sentences but labels of shape {labels.shape}")
            self.image_sentence_labels.append(labels)
        if len(table) == 0:
            raise ValueError("the fallback sentence table is empty")
        self.table = table
        self.prompts = prompt_sentences(table, n_prompts, seed)
        self._no_finding_table = np.flatnonzero(table.labels[:, 0] > 0)
        self._no_finding_prompts = (
            np.flatnonzero(self.prompts.labels[:, 0] == 1) if len(self.prompts) else np.zeros(0, np.int64)
        )

    @classmethod
    def from_reports(
        cls,
        reports: Sequence[str | None],
        table: TextPool,
        *,
        labels: str = "lookup",
        clean_table: bool = True,
        seed: int = 0,
        n_prompts: int = 200,
    ) -> ReportSampler:
        """A sampler from each training image's raw report text (None or "" where the image has none) and the
        sentence table (MedCLIP's ``sentence-label.csv`` or the study's text pool): reports are segmented as
        released; ``clean_table`` cleans the table as released first; ``labels`` labels report sentences by
        table lookup with the No Finding default ("lookup", as released) or with artmed's rule labeler
        ("labeler")."""
        if labels not in ("lookup", "labeler"):
            raise ValueError(f"labels must be 'lookup' or 'labeler', got {labels!r}")
        table = clean_sentence_labels(table) if clean_table else table
        lookup = sentence_label_lookup(table) if labels == "lookup" else None
        sentences, label_arrays = [], []
        found = total = 0
        for report in reports:
            sents = split_report_into_segments(report)
            if lookup is not None:
                rows = [lookup.get(s, NO_FINDING) for s in sents]
                found += sum(s in lookup for s in sents)
            else:
                rows = [label_sentence(s) for s in sents]
            total += len(sents)
            sentences.append(sents)
            label_arrays.append(np.stack(rows) if rows else np.zeros((0, NUM_LABELS), np.float32))
        sampler = cls(sentences, label_arrays, table, seed=seed, n_prompts=n_prompts)
        sampler.lookup_hits = found / total if lookup is not None and total else None
        return sampler

    lookup_hits: float | None = None
    """With ``labels="lookup"``: the share of report sentences found in the table (the rest are No Finding)."""

    fallback_labels: np.ndarray | None = None
    """(N, 14) labels the fallback of image i matches instead of the label ``sample`` is given for it (default None:
    the given one). The released dataset draws an image's fallback from its row's labels before a BadMatch
    relabelling, so a study sets the clean training labels here (``with_fallback_labels``)."""

    def with_fallback_labels(self, labels: np.ndarray) -> ReportSampler:
        """A copy whose fallbacks match ``labels`` ((N, 14), one row per image) rather than the labels ``sample`` is
        given (see ``fallback_labels``); the sentences, table and prompt pool are shared."""
        labels = np.asarray(labels, dtype=np.float32)
        if labels.shape != (len(self), NUM_LABELS):
            raise ValueError(f"fallback labels must have shape ({len(self)}, {NUM_LABELS}), got {labels.shape}")
        out = copy.copy(self)
        out.fallback_labels = labels.copy()
        return out

    def subset(self, rows: Sequence[int] | np.ndarray) -> ReportSampler:
        """The sampler of the images at ``rows`` (indices or a boolean mask), in that order: the same table and
        prompt pool (not drawn again), e.g. for a training set a defender filtered."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"a boolean row mask must have shape ({len(self)},), got {rows.shape}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).tolist()
        out = copy.copy(self)
        out.image_sentences = [self.image_sentences[i] for i in rows]
        out.image_sentence_labels = [self.image_sentence_labels[i] for i in rows]
        if self.fallback_labels is not None:
            out.fallback_labels = self.fallback_labels[rows]
        return out

    def __len__(self) -> int:
        return len(self.image_sentences)

    @property
    def without_report(self) -> int:
        """How many images have no report sentence (they get fallback sentences)."""
        return sum(not s for s in self.image_sentences)

    def _table_row(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        i = int(rows[rng.integers(len(rows))]) if len(rows) else int(rng.integers(len(self.table)))
        return self.table.sentences[i], self.table.labels[i]

    def fallback(self, image_label: np.ndarray, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        """The released sentence for an image without report sentences (see the module doc)."""
        image_label = np.asarray(image_label, dtype=np.float32)
        if not image_label.any():
            return self._table_row(self._no_finding_table, rng)
        if len(self.prompts):
            agree = (self.prompts.labels[:, 1:] * image_label[1:] > 0).any(axis=1)
            rows = np.flatnonzero(agree)
            if not len(rows):
                rows = self._no_finding_prompts
            if len(rows):
                i = int(rows[rng.integers(len(rows))])
                return self.prompts.sentences[i], self.prompts.labels[i]
        return self._table_row(self._no_finding_table, rng)

    def sample(
        self, image_rows: Sequence[int] | np.ndarray, image_labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[str], np.ndarray]:
        """One sentence per image of ``image_rows`` (indices into the training images, with their (B, 14)
        ``image_labels``): a uniform draw from its report, or the fallback (matching ``fallback_labels[row]`` when
        set). Returns (sentences, (B, 14) labels)."""
        sentences, labels = [], []
        for row, image_label in zip(np.asarray(image_rows).tolist(), image_labels):
            sents = self.image_sentences[row]
            if sents:
                k = int(rng.integers(len(sents)))
                sentences.append(sents[k])
                labels.append(self.image_sentence_labels[row][k])
            else:
                s, y = self.fallback(image_label if self.fallback_labels is None else self.fallback_labels[row], rng)
                sentences.append(s)
                labels.append(y)
        return sentences, np.stack(labels).astype(np.float32)


__all__ = [
    "NO_FINDING",
    "ReportSampler",
    "clean_sentence_labels",
    "prompt_sentences",
    "sentence_label_lookup",
    "split_report_into_segments",
    "wordpunct_tokenize",
]
