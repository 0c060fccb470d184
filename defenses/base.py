"""The defense interface: the `Defense` base class, the context a defense runs on and the results it returns.

A defense holds its parameters (set in ``__init__``, checked in one ``_check_params``) and has one verb,
``run(context)``. Detection defenses return per-sample scores and flags; mitigations return a repaired estimator.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.dataset import ImageSet
from artmed.params import Choice, Params
from artmed.progress import tqdm


def group_labels(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group samples by their label row: returns (group id per sample, one readable name per group).

    Rows of a (N, 14) CheXpert matrix are grouped by their exact value (the "class" of SS/AC); a 1-D array of
    class ids is grouped by value. Names list the positive findings ("Edema+Pleural Effusion"), uncertain ones
    with a "?", and "none" for an all-zero row. Groups are numbered in sorted order of their rows. Labels that
    are not numbers, or are NaN or infinite, raise a ValueError naming the first bad row and column.
    """
    arr = _label_matrix(y)
    ids = _lexicographic_ranks(arr)
    first = np.unique(ids, return_index=True)[1]
    return ids, [_group_name(row) for row in arr[first]]


def _label_matrix(y: np.ndarray) -> np.ndarray:
    """``y`` as a 2-D label matrix (a 1-D array becomes one column), refused unless numbers, finite and non-empty."""
    arr = np.asarray(y)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N,) or (N, K) array, got shape {np.shape(y)}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"labels must be numbers, got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"labels contain NaN or infinite values in {int(bad.any(axis=1).sum())} of {arr.shape[0]} "
            f"rows (first: row {row}, column {col})"
        )
    return arr


def _lexicographic_ranks(arr: np.ndarray) -> np.ndarray:
    """Dense rank (int64, N) of each row of a 2-D array in lexicographic row order: what
    ``np.unique(arr, axis=0, return_inverse=True)`` returns, built column by column from 1-D uniques (that sorts
    plain numbers instead of row records: 10x faster on 200k x 14 labels)."""
    ranks = np.zeros(arr.shape[0], dtype=np.int64)
    for column in arr.T:
        values, inverse = np.unique(column, return_inverse=True)
        ranks = np.unique(ranks * values.shape[0] + inverse.reshape(-1), return_inverse=True)[1].reshape(-1)
        ranks = ranks.astype(np.int64, copy=False)
    return ranks


def _group_name(row: np.ndarray) -> str:
    if row.shape[0] != NUM_LABELS:
        return str(row[0].item()) if row.shape[0] == 1 else str(row.tolist())
    parts = [name for name, v in zip(CHEXPERT_LABELS, row) if v == 1]
    parts += [f"{name}?" for name, v in zip(CHEXPERT_LABELS, row) if v == -1]
    return "+".join(parts) if parts else "none"


GROUPINGS = ("label_vector", "finding", "predicted_class", "none")
"""How a detector groups the training rows it analyses (``LabelGroups.split``): by the exact label vector, by the
primary finding, by the class the model predicts zero-shot, or all rows as one group."""
DEFAULT_GROUPING = "finding"
"""The default: on the default study's 2000 phantom rows, exact label vectors leave 191-228 rows in groups of one and
482-542 in groups under 10 (never examined), primary findings 0 and 0-7 (15 groups; the poisoned rows' group is the
same "No Finding" group, 1080-1131 rows instead of 979-1026). One group ("none") or the predicted class examine every
row but give SCAn no groups to compare and dilute the poison over all rows; single-finding labels group exactly as
under "label_vector", so ART parity holds."""
GROUPING_RULE = Choice(GROUPINGS)
"""The ``grouping`` parameter rule every detector declares."""
PREDICTED_CLASS_KEY = "zero_shot_class"
"""``EvaluationContext.feature_cache`` key of the training rows' zero-shot classes (grouping "predicted_class")."""


class UnexaminedRowsWarning(UserWarning):
    """Training rows sit in groups too small to analyse: the detector never flags them."""


def finding_groups(y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group samples by their primary finding: the first positive (1) column of the label row in CheXpert's column
    order ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", ...), "none" when no column is positive
    (uncertain -1 counts as not positive). A multi-label row thus joins one group, that of its first finding, and the
    14 findings give at most 15 groups (label vectors give up to 2^14). The groups are those ``group_labels`` makes of
    the rows reduced to their primary finding (a one-hot row, or all zeros), so single-finding labels group, number
    and name exactly as under "label_vector"; a 1-D array of class ids is grouped by value. Bad labels raise as in
    ``group_labels``."""
    arr = _label_matrix(y)
    if arr.shape[1] == 1:
        return group_labels(arr)
    positive = arr == 1
    primary = np.zeros(arr.shape, dtype=np.int8)
    rows = np.flatnonzero(positive.any(axis=1))
    primary[rows, positive[rows].argmax(axis=1)] = 1
    return group_labels(primary)


def predicted_class_groups(context: EvaluationContext, rows: str = "train") -> tuple[np.ndarray, list[str]]:
    """Group samples by the class the context's estimator predicts for them zero-shot (argmax of ``predict``) over
    the context's task prompts (the estimator's own prompts when the context has no task); groups are named by the
    class (the task's class names, else the estimator's ``classes``, else the index). `rows` picks the samples:
    "train" (``x_train``) or "clean" (the defender's ``x_clean``). The predictions are computed once per model and
    kept in ``context.feature_cache`` (under ``PREDICTED_CLASS_KEY``, with "/clean" for the clean rows), where a
    feature-only context may also supply them."""
    estimator = context.estimator
    key, x = (
        (PREDICTED_CLASS_KEY, context.x_train) if rows == "train" else (f"{PREDICTED_CLASS_KEY}/clean", context.x_clean)
    )
    if key not in context.feature_cache:
        if estimator is None or x is None:
            raise ValueError(
                f"grouping='predicted_class' needs a context with an estimator and x_{rows} (or the "
                f"classes in feature_cache[{key!r}])"
            )
        prompts = getattr(context.task, "prompts", None)
        if prompts is not None and hasattr(estimator, "with_prompts"):
            estimator = estimator.with_prompts(prompts)
        n = len(x)
        classes = np.empty(n, dtype=np.int64)
        for start in range(0, n, context.batch_size):
            idx = np.arange(start, min(start + context.batch_size, n))
            classes[idx] = np.asarray(estimator.predict(load_images(x, idx))).argmax(axis=1)
        context.feature_cache[key] = read_only(classes)
    predicted = np.asarray(context.feature_cache[key]).reshape(-1)
    present, ids = np.unique(predicted, return_inverse=True)
    names = getattr(context.task, "class_names", None) or getattr(estimator, "classes", None)
    return ids.astype(np.int64), [str(names[c]) if names is not None and c < len(names) else str(c) for c in present]


@dataclass
class LabelGroups:
    """Samples split into groups (by the detector's ``grouping``): the groups large enough to analyse and a record of
    those skipped (whose rows are never examined)."""

    ids: np.ndarray
    names: list[str]
    analysed: list[tuple[int, np.ndarray]]
    skipped: list[dict[str, Any]]

    @property
    def unexamined(self) -> int:
        """How many rows sit in skipped groups."""
        return sum(s["size"] for s in self.skipped)

    @classmethod
    def split(
        cls, context: EvaluationContext, n: int, min_size: int, defense: str, grouping: str = DEFAULT_GROUPING
    ) -> LabelGroups:
        """Group the `n` training rows of `context` by `grouping` (one of ``GROUPINGS``):

        - "label_vector": the exact label row (``group_labels``; the "class" of SS/AC);
        - "finding": the primary finding (``finding_groups``);
        - "predicted_class": the zero-shot class the context's estimator predicts (``predicted_class_groups``);
        - "none": all rows in one group "all".

        Groups under `min_size` samples are skipped, with an ``UnexaminedRowsWarning``. Missing labels (for the label
        groupings), or a number of rows other than `n` (the samples analysed), raise ValueError."""
        if grouping in ("label_vector", "finding"):
            if context.y_train is None:
                raise ValueError(f"{defense}: the context has no y_train (labels of the training samples)")
            if np.shape(context.y_train)[:1] != (n,):
                raise ValueError(
                    f"{defense}: y_train has shape {np.shape(context.y_train)}, but {n} training samples "
                    "are analysed (one label row each)"
                )
        ids, names = row_groups(context, grouping, n, defense)
        analysed, skipped = [], []
        for g in range(len(names)):
            idx = np.flatnonzero(ids == g)
            if idx.shape[0] >= min_size:
                analysed.append((g, idx))
            else:
                skipped.append({"group": names[g], "size": int(idx.shape[0])})
        groups = cls(ids, names, analysed, skipped)
        if skipped:
            warnings.warn(
                f"{defense}: {len(skipped)} label group(s) (grouping {grouping!r}) with fewer than {min_size} samples "
                f"({groups.unexamined} samples) are never flagged; see result.extra['skipped_groups']",
                UnexaminedRowsWarning,
                stacklevel=3,
            )
        return groups


def row_groups(
    context: EvaluationContext, grouping: str, n: int, defense: str, rows: str = "train", labels: Any = None
) -> tuple[np.ndarray, list[str]]:
    """Group ids and names of the context's `n` training rows (`rows` "train", labels ``y_train``) or its defender's
    clean rows ("clean", ``y_clean``) by `grouping` (one of ``GROUPINGS``): one rule for both, so a detector that
    compares the two (SCAn's global model) groups them alike. The label groupings read `labels` when given, else the
    context's field; errors name the defense and the field."""
    if grouping not in GROUPINGS:
        raise ValueError(f"{defense}: grouping must be one of {GROUPINGS}, got {grouping!r}")
    if grouping == "predicted_class":
        ids, names = predicted_class_groups(context, rows)
    elif grouping == "none":
        ids, names = np.zeros(n, dtype=np.int64), ["all"]
    else:
        field = f"y_{rows}"
        try:
            rule = group_labels if grouping == "label_vector" else finding_groups
            ids, names = rule(getattr(context, field) if labels is None else labels)
        except ValueError as err:
            raise ValueError(f"{defense}: {field}: {err}") from None
    if ids.shape[0] != n:
        what = "predicted classes" if grouping == "predicted_class" else "label rows"
        raise ValueError(
            f"{defense}: {ids.shape[0]} {what}, but {n} {'training' if rows == 'train' else rows} samples are analysed"
        )
    return ids, names


def share_count(n: int, share: float) -> int:
    """How many of ``n`` samples a ``share`` covers: floor(share·n), at most n (1e-9 absorbs the float error of
    share·n landing just under an integer)."""
    return min(int(np.floor(share * n + 1e-9)), n)


def flag_top(score: np.ndarray, share: float) -> np.ndarray:
    """Bool flags of the ``share_count(N, share)`` highest scores (ties: the earlier sample first)."""
    flags = np.zeros(score.shape[0], dtype=bool)
    flags[np.argsort(-score, kind="stable")[: share_count(score.shape[0], share)]] = True
    return flags


def check_finite(features: np.ndarray, layer: str) -> np.ndarray:
    """Return `features` flattened to (N, D); NaN/inf rows raise a ValueError saying how many rows are bad."""
    arr = np.asarray(features)
    if arr.ndim < 2:
        raise ValueError(f"features of layer {layer!r} must be (N, D, ...), got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1)
    if arr.size == 0 or (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        return arr  # NaN and inf reach the min or max: two allocation-free passes, no (N, D) mask
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(
            f"features of layer {layer!r} contain NaN or infinite values in {int(bad.sum())} of {arr.shape[0]} rows "
            f"(first: row {int(np.flatnonzero(bad)[0])})"
        )
    return arr


@dataclass
class EvaluationContext:
    """What a defender has: the (possibly backdoored) estimator, its training data and labels, the text pool, clean
    data it owns and a feature cache. It holds no ground truth — not which rows are poisoned, not the trigger, not
    the target: the harness alone holds those and scores every result.

    `estimator` may be None for feature-only use (then `feature_fn` or `feature_cache` must supply features).
    `x_train` is an (N, 1, H, W) array or an ImageSet, `y_train` its (N, 14) labels. `texts`/`text_labels` are the
    unpaired text pool. `x_test`/`test_targets` are clean held-out images of one zero-shot `task` with their integer
    targets (validation data, e.g. fine-pruning's stopping rule); `x_clean`/`y_clean` is a clean training-like set
    the defender owns. `report(label, estimator)` hands an intermediate model to the harness's `monitor` (which
    scores it out of the defense's sight; a no-op without one). `features(layer)` extracts activations once and
    caches them (share `feature_cache` between contexts of the same model).
    """

    estimator: Any = None
    x_train: np.ndarray | ImageSet | None = None
    y_train: np.ndarray | None = None
    texts: list[str] | None = None
    text_labels: np.ndarray | None = None
    x_test: np.ndarray | ImageSet | None = None
    test_targets: np.ndarray | None = None
    task: Any = None
    x_clean: np.ndarray | ImageSet | None = None
    y_clean: np.ndarray | None = None
    seed: int = 0
    batch_size: int = 64
    feature_fn: Callable[[str], np.ndarray] | None = None
    feature_cache: dict[str, np.ndarray] = field(default_factory=dict)
    monitor: Callable[[str, Any], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = None if self.y_train is None else len(self.y_train)
        if self.x_train is not None and n is not None and len(self.x_train) != n:
            raise ValueError(f"x_train has {len(self.x_train)} samples but y_train has {n} rows")
        for name in _SHARED_ARRAYS:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                setattr(self, name, read_only(value))

    def report(self, label: str, estimator: Any) -> None:
        """Hand ``estimator`` (an intermediate or final repaired model) to the harness's monitor under ``label``."""
        if self.monitor is not None:
            self.monitor(label, estimator)

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        if self.y_train is None:
            raise ValueError("the context has no y_train")
        return len(self.y_train)

    def features(self, layer: str) -> np.ndarray:
        """Activations of `layer` for every training sample as (N, D), computed once and cached."""
        if layer not in self.feature_cache:
            if self.feature_fn is not None:
                feats = self.feature_fn(layer)
            elif self.estimator is not None and self.x_train is not None:
                feats = self._extract(layer)
            else:
                raise ValueError(
                    f"cannot compute features of layer {layer!r}: the context has no feature_fn, "
                    "no cached features and no estimator with x_train"
                )
            feats = np.asarray(feats)
            feats = feats.reshape(feats.shape[0], -1)
            if self.y_train is not None and feats.shape[0] != self.n_train:
                raise ValueError(f"features of layer {layer!r} have {feats.shape[0]} rows, expected {self.n_train}")
            self.feature_cache[layer] = read_only(feats)
        return self.feature_cache[layer]

    def _extract(self, layer: str) -> np.ndarray:
        """Stream the images through the estimator batch by batch into one preallocated (N, D) array (no list of
        batches to concatenate, which would hold the features twice)."""
        x_train = self.x_train
        assert x_train is not None  # features() extracts only with x_train
        n = len(x_train)
        if n == 0:
            raise ValueError("cannot extract features: x_train is empty")
        feats: np.ndarray | None = None
        for start in tqdm(range(0, n, self.batch_size), desc=f"features {layer}", leave=False):
            stop = min(start + self.batch_size, n)
            batch = np.asarray(
                self.estimator.get_activations(
                    load_images(x_train, np.arange(start, stop)), layer=layer, batch_size=self.batch_size
                )
            )
            batch = batch.reshape(batch.shape[0], -1)
            if feats is None:
                feats = np.empty((n, batch.shape[1]), dtype=batch.dtype)
            feats[start:stop] = batch
        assert feats is not None  # n > 0: at least one batch
        return feats


_SHARED_ARRAYS = ("x_train", "y_train", "text_labels", "x_test", "test_targets", "x_clean", "y_clean")
"""Context arrays every defense of a model shares: handed out read-only, so no defense can change what the next sees."""


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (the data is not copied; writing through the view raises)."""
    view = array.view()
    view.flags.writeable = False
    return view


def load_images(images: np.ndarray | ImageSet, indices: np.ndarray) -> np.ndarray:
    """Images at `indices` from an array or an ImageSet, as an (B, C, H, W) float32 array."""
    if isinstance(images, ImageSet):
        return images.get_batch(indices)
    return np.asarray(images[indices], dtype=np.float32)


@dataclass
class DetectionResult:
    """Per-sample suspicion: continuous `scores` (higher = more suspicious, for AUROC) and boolean `flags`; `groups`
    the group id of each sample and ``extra["skipped_groups"]`` the groups never examined (see ``unexamined``)."""

    scores: np.ndarray
    flags: np.ndarray
    groups: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.flags = _as_flags(self.flags)
        if self.scores.ndim != 1 or self.flags.shape != self.scores.shape:
            raise ValueError(f"scores {self.scores.shape} and flags {self.flags.shape} must both be (N,)")
        if self.groups is not None and np.shape(self.groups) != self.scores.shape:
            raise ValueError(f"groups {np.shape(self.groups)} must match scores {self.scores.shape}")

    @property
    def removed_share(self) -> float:
        """Share of the training set flagged (and so removed)."""
        return float(self.flags.mean()) if self.flags.size else 0.0

    @property
    def unexamined(self) -> int | None:
        """How many rows the detector never examined: the sizes summed over ``extra["skipped_groups"]`` (groups too
        small to analyse); None for a detector that does not report skipped groups."""
        skipped = self.extra.get("skipped_groups")
        return None if skipped is None else int(sum(s["size"] for s in skipped))


def _as_flags(flags: Any) -> np.ndarray:
    """``flags`` as a bool array; numbers other than 0 and 1 (a score passed as a flag) raise instead of all
    becoming True."""
    arr = np.asarray(flags)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        sample = arr[~np.isin(arr, (0, 1))][:3].tolist() if arr.dtype.kind in "iuf" else arr.dtype
        raise ValueError(f"flags must be boolean (or 0/1), got {arr.dtype} values such as {sample}")
    return arr.astype(bool)


@dataclass
class MitigationResult:
    """A repaired estimator with the step-by-step history (one dict per step, e.g. CA/ASR)."""

    estimator: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(getattr(self.estimator, "predict", None)):
            raise ValueError(
                f"a mitigation must return an estimator with predict(), got {type(self.estimator).__name__}"
            )


@dataclass
class InputScreen:
    """An input-level defense (kind ``"input"``): ``score(x)`` gives each inference-time input of an (N, C, H, W)
    batch its suspicion (higher = more likely triggered); ``threshold``, when set, is the defense's own operating
    point (inputs scoring above it are rejected), chosen on the defender's clean data."""

    score: Callable[[np.ndarray], np.ndarray]
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.score):
            raise ValueError(f"InputScreen.score must be callable, got {type(self.score).__name__}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"InputScreen.threshold must be finite, got {self.threshold!r}")


@dataclass
class ModelVerdict:
    """A model-level defense's verdict (kind ``"model"``): the model's suspicion ``score``, the decision
    ``backdoored`` at the defense's ``threshold``, and ``extra`` (e.g. an inverted trigger: ``mask`` (H, W) in
    [0, 1] and ``pattern``)."""

    score: float
    backdoored: bool
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.score, (int, float, np.number)) or not np.isfinite(self.score):
            raise ValueError(f"ModelVerdict.score must be a finite number, got {self.score!r}")
        if not isinstance(self.backdoored, (bool, np.bool_)):
            raise ValueError(f"ModelVerdict.backdoored must be a bool, got {self.backdoored!r}")
        self.score, self.backdoored = float(self.score), bool(self.backdoored)


DefenseResult = DetectionResult | MitigationResult | InputScreen | ModelVerdict
RESULT_TYPES: dict[str, type] = {
    "detection": DetectionResult,
    "mitigation": MitigationResult,
    "input": InputScreen,
    "model": ModelVerdict,
}
"""What ``run`` returns for each kind: per-training-sample flags, a repaired model, an inference-time input screen,
or a verdict on the model itself."""


class Defense(Params, ABC):
    """A backdoor defense: parameters in ``__init__`` (checked by ``_check_params``), one verb ``run``.

    Parameters follow :mod:`artmed.params`: stored unchanged, checked by ``_check_params`` (typically
    ``self.check_rules()`` over the class's ``param_rules``, then checks across parameters), read by ``get_params``
    (recorded with every result) and changed all-or-nothing by ``set_params``.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["detection", "mitigation", "input", "model"]]

    @classmethod
    def param_error(cls, name: str, what: str, value: Any) -> ValueError:
        """The error refusing ``value`` for parameter ``name``, worded "<name> must be <what>, got <value>
        (<Class>)": it starts with the parameter, so a config that built the defense can put its field path in
        front (``config.defenses[0].params: eps must be ...``)."""
        return ValueError(f"{name} must be {what}, got {value!r} ({cls.__name__})")

    @abstractmethod
    def _check_params(self) -> None:
        """Raise ValueError naming the first invalid parameter."""

    @abstractmethod
    def run(self, context: EvaluationContext) -> DefenseResult:
        """Apply the defense to `context`."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
