"""The BadDist separation benchmark (``artmed separation``): rows per seed and trigger, the success rule, the CLI."""

import json

import pytest

from artmed.evaluations.cli import main
from artmed.evaluations.separation import SUCCESS, base_model, separation

SMALL = {
    "image_size": 32,
    "n_train": 40,
    "n_shadow": 16,
    "n_probe": 10,
    "pretrain": {"steps": 2, "batch_size": 8},
    "device": "cpu",
}


def test_rows_per_trigger_with_the_success_rule():
    rows = separation(
        "tiny", 1, [("patch", {}), ("fourier", {"alpha": 0.3})], {"settings": "tiny", "steps": 3}, **SMALL
    )
    assert [(r["seed"], r["trigger"]) for r in rows] == [(1, "patch"), (1, "fourier alpha=0.3")]
    for row in rows:
        assert -1.0 <= row["cos_trigger"] <= 1.0 and -1.0 <= row["cos_clean"] <= 1.0
        assert row["separated"] == (
            row["cos_trigger"] <= SUCCESS["cos_trigger_max"] and row["cos_clean"] >= SUCCESS["cos_clean_min"]
        )
        assert row["baddist_seconds"] > 0 and row["pretrain_seconds"] > 0
    with pytest.raises(ValueError, match="unknown preset 'vit'"):
        base_model("vit", {"a": ["x"], "b": ["y"]}, 32, 0, "cpu")


def test_cli_writes_every_row(tmp_path, capsys):
    out = tmp_path / "sep.json"
    assert (
        main(
            [
                "separation",
                "--seeds",
                "2",
                "--triggers",
                "patch",
                "--baddist",
                '{"steps": 2}',
                "--image-size",
                "32",
                "--n-train",
                "40",
                "--n-shadow",
                "16",
                "--pretrain",
                '{"steps": 2, "batch_size": 8}',
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["seed"] for r in rows] == [0, 1]
    printed = capsys.readouterr().out
    assert "tiny patch: separated on" in printed and "of 2 seeds" in printed
