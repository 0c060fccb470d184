"""The detectors' `grouping`: which rows form a group, rows left unexamined, and the warning said once per run."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.defenses import (
    SPECTRE,
    ActivationClustering,
    ARTActivationClustering,
    ARTSpectralSignatures,
    EvaluationContext,
    SCAn,
    SpectralSignatures,
)
from artmed.defenses.base import (
    GROUPINGS,
    PREDICTED_CLASS_KEY,
    LabelGroups,
    UnexaminedRowsWarning,
    finding_groups,
    group_labels,
)
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness

DETECTORS = (SpectralSignatures, ActivationClustering, ARTSpectralSignatures, ARTActivationClustering, SPECTRE, SCAn)


def labels(*rows):
    """(N, 14) label rows from {column: value} dicts."""
    y = np.zeros((len(rows), 14), np.float32)
    for i, row in enumerate(rows):
        for col, value in row.items():
            y[i, col] = value
    return y


# columns: 0 No Finding, 2 Cardiomegaly, 5 Edema, 10 Pleural Effusion
Y = labels({}, {0: 1}, {2: 1, 5: 1}, {5: 1}, {2: -1, 5: 1}, {0: 1}, {5: 1, 10: 1})


class FakeEstimator:
    """Predicts class 1 for images with mean above 0.5, else class 0; records the prompts it is given."""

    classes = ["own a", "own b"]

    def __init__(self, prompts=None, calls=None):
        self.prompts, self.calls = prompts, calls if calls is not None else []

    def with_prompts(self, prompts):
        return FakeEstimator(prompts, self.calls)

    def predict(self, x):
        self.calls.append((len(x), self.prompts))
        high = x.reshape(len(x), -1).mean(1) > 0.5
        return np.stack([~high, high], axis=1).astype(np.float32)


def test_finding_groups_by_first_positive_finding():
    ids, names = finding_groups(Y)
    # a multi-label row joins its first finding in CheXpert order; an uncertain (-1) finding is not positive
    assert [names[g] for g in ids] == ["none", "No Finding", "Cardiomegaly", "Edema", "Edema", "No Finding", "Edema"]
    single = Y[[0, 1, 3, 5]]  # rows with at most one finding: numbered and named as their label vectors
    for got, expected in zip(finding_groups(single), group_labels(single)):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(finding_groups(np.array([2, 0, 2]))[0], [1, 0, 1])
    with pytest.raises(ValueError, match="labels contain NaN"):
        finding_groups(np.where(Y == 1, np.nan, Y))


@pytest.mark.parametrize(
    ("grouping", "expected"),
    [
        (
            "label_vector",
            [
                ["none"],
                ["No Finding"],
                ["Cardiomegaly+Edema"],
                ["Edema"],
                ["Edema+Cardiomegaly?"],
                ["No Finding"],
                ["Edema+Pleural Effusion"],
            ],
        ),
        ("finding", [["none"], ["No Finding"], ["Cardiomegaly"], ["Edema"], ["Edema"], ["No Finding"], ["Edema"]]),
        ("none", [["all"]] * 7),
    ],
)
def test_label_groupings(grouping, expected):
    groups = LabelGroups.split(EvaluationContext(y_train=Y), 7, 1, "test", grouping)
    assert [[groups.names[g]] for g in groups.ids] == expected
    assert groups.skipped == [] and sum(idx.shape[0] for _, idx in groups.analysed) == 7


def test_predicted_class_groups_by_the_estimators_zero_shot_class_over_the_task_prompts():
    x = np.zeros((7, 1, 2, 2), np.float32)
    x[[1, 4, 5]] = 1.0
    task = SimpleNamespace(class_names=["normal", "pneumonia"], prompts={"normal": ["n"], "pneumonia": ["p"]})
    estimator = FakeEstimator()
    context = EvaluationContext(estimator=estimator, x_train=x, y_train=Y, task=task, batch_size=3)
    groups = LabelGroups.split(context, 7, 1, "test", "predicted_class")
    assert groups.names == ["normal", "pneumonia"]
    np.testing.assert_array_equal(groups.ids, [0, 1, 0, 0, 1, 1, 0])
    assert estimator.calls == [(3, task.prompts), (3, task.prompts), (1, task.prompts)]
    LabelGroups.split(context, 7, 1, "test", "predicted_class")
    assert len(estimator.calls) == 3  # predicted once per model, then read from the feature cache
    np.testing.assert_array_equal(context.feature_cache[PREDICTED_CLASS_KEY], [0, 1, 0, 0, 1, 1, 0])


def test_predicted_class_needs_an_estimator_or_cached_classes():
    with pytest.raises(ValueError, match="grouping='predicted_class' needs a context with an estimator"):
        LabelGroups.split(EvaluationContext(y_train=Y), 7, 1, "test", "predicted_class")
    cached = EvaluationContext(feature_cache={PREDICTED_CLASS_KEY: np.array([2, 2, 0, 0, 0, 2, 2])})
    groups = LabelGroups.split(cached, 7, 1, "test", "predicted_class")
    assert groups.names == ["0", "2"] and groups.ids.tolist() == [1, 1, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="test: 7 predicted classes, but 6 training samples"):
        LabelGroups.split(cached, 6, 1, "test", "predicted_class")


@pytest.mark.parametrize("cls", DETECTORS)
def test_unknown_grouping_refused_naming_the_parameter(cls):
    with pytest.raises(ValueError, match=r"^grouping must be one of \('label_vector', 'finding', 'predicted_class'"):
        cls(grouping="class")
    defense = cls()
    with pytest.raises(ValueError, match="^grouping must be"):
        defense.set_params(grouping="per_label", min_group_size=12)
    assert defense.grouping in GROUPINGS and defense.min_group_size != 12  # all or nothing
    assert cls(grouping="none").get_params()["grouping"] == "none"


def test_unexamined_counts_rows_in_skipped_groups():
    y = labels(*[{0: 1}] * 30, *[{5: 1}] * 12, *[{5: 1, 10: 1}] * 8, {2: 1}, {2: 1, 5: 1}, {2: 1, 5: 1})
    feats = np.random.default_rng(0).normal(size=(53, 8))
    context = EvaluationContext(y_train=y, feature_cache={"image_pooled": feats})
    # label vectors: Edema+Pleural Effusion (8), Cardiomegaly (1), Cardiomegaly+Edema (2) are under 10 rows;
    # findings: Edema+Pleural Effusion joins Edema, the three Cardiomegaly rows stay under 10; none: one group
    expected = {"label_vector": (3, 11), "finding": (1, 3), "none": (0, 0)}
    for grouping, (n_groups, unexamined) in expected.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = ActivationClustering(grouping=grouping, n_components=2).run(context)
        assert result.unexamined == unexamined
        assert [str(w.message) for w in caught if w.category is UnexaminedRowsWarning] == (
            [
                f"activation_clustering: {n_groups} label group(s) (grouping {grouping!r}) with fewer than 10 samples "
                f"({unexamined} samples) are never flagged; see result.extra['skipped_groups']"
            ]
            if n_groups
            else []
        )
        if unexamined:
            assert not result.flags[50:].any() and not result.scores[50:].any()


def test_harness_records_unexamined_and_warns_once_per_defense(tmp_path):
    config = StudyConfig(
        seed=0,
        output_dir=str(tmp_path / "study"),
        data=DataConfig(n_train=100, n_test=20, n_shadow=16, image_size=32),
        pretrain=TrainConfig(steps=1, batch_size=16),
        train=TrainConfig(steps=1, batch_size=16),
        attacks=[AttackSpec("clean"), AttackSpec("badmatch", percent_poison=0.05)],
        defenses=[
            DefenseSpec("spectral_signatures", {"grouping": "label_vector"}),
            DefenseSpec("activation_clustering", {"grouping": "none"}),
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Harness(config, verbose=False).run()
    rows = {(row["defense"], row["attack"]): row for row in result.defenses}
    assert all(row["status"] == "ok" for row in rows.values())
    assert [rows["activation_clustering", attack]["unexamined"] for attack in ("clean", "badmatch")] == [0, 0]
    small = [rows["spectral_signatures", attack]["unexamined"] for attack in ("clean", "badmatch")]
    assert all(n > 0 for n in small)  # the phantom data's rare label vectors come one row at a time
    said = [str(w.message) for w in caught if w.category is UnexaminedRowsWarning]
    assert said == [
        f"spectral_signatures: {small[0]} of 100 training rows sit in label groups too small to analyse "
        "and are never examined (see its grouping and min_group_size); the 'unexamined' column counts "
        "them in every cell"
    ]
