"""Loader workers from the study config: the models read images through them and the results do not change."""

import pytest

from artmed.attacks.pipeline import AttackSpec
from artmed.evaluations.config import DataConfig, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness


def _study(folder, workers: int) -> StudyConfig:
    return StudyConfig(
        output_dir=str(folder),
        data=DataConfig(n_train=96, n_test=20, n_shadow=16, image_size=32, num_workers=workers),
        pretrain=TrainConfig(steps=3, batch_size=16),
        train=TrainConfig(steps=3, batch_size=16),
        attacks=[AttackSpec("badmatch", percent_poison=0.05)],
    )


def test_workers_reach_the_models_and_change_no_result(tmp_path):
    plain = Harness(_study(tmp_path / "plain", 0), verbose=False)
    threaded = Harness(_study(tmp_path / "workers", 1), verbose=False)
    (a,), (b,) = plain.run().models, threaded.run().models
    for key in ("ca", "asr", "asr_all", "ra"):
        assert a[key] == b[key]
    assert threaded._load_model(tmp_path / "workers" / "models" / "base-s0").num_workers == 1
    # the worker count is not a setting of the cells: the folder resumes under another count
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "workers" / "cells").rglob("*.json")}
    (c,) = Harness(_study(tmp_path / "workers", 0), verbose=False).run().models
    assert c["ca"] == b["ca"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "workers" / "cells").rglob("*.json")} == stamps


def test_num_workers_is_checked():
    with pytest.raises(ValueError, match="num_workers must be a non-negative integer"):
        DataConfig(num_workers=-1)
