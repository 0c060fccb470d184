"""Data-parallel training: 2 gloo processes under torchrun give what one process gives with the same global batch."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from artmed import distributed as D
from artmed.estimator import MedCLIPEstimator
from artmed.train_ddp import build_parser, fit_default, set_text_dropout

WORKER = Path(__file__).with_name("_ddp_worker.py")
# Image batch 9 and text batch 7 split unevenly over 2 ranks (5+4, 4+3); BERT dropout off so both runs draw no masks.
FIT = {
    "steps": 4,
    "batch_size": 9,
    "text_batch_size": 7,
    "n_train": 24,
    "n_texts": 20,
    "image_size": 32,
    "text_dropout": 0.0,
    "seed": 3,
    "lr": 1e-3,
}
CLI = [
    "--steps",
    "4",
    "--batch-size",
    "9",
    "--text-batch-size",
    "7",
    "--n-train",
    "24",
    "--n-texts",
    "20",
    "--image-size",
    "32",
    "--text-dropout",
    "0",
    "--seed",
    "3",
    "--lr",
    "1e-3",
    "--quiet",
]


def load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_losses(ddp: list[float], single: list[float]) -> None:
    """The gathered full-batch loss of every step equals one process's.

    Step 0 runs on identical weights: only the float32 reduction order differs (gloo's all-reduce of 2 ranks, batch
    sums split 5+4): relative error ~1e-6, so rtol 1e-5; a per-rank loss differs there by > 1e-2. Later steps run on
    weights that Adam has moved apart: it divides each gradient by its own running magnitude, so an entry whose
    gradient is float noise takes a different step of up to lr in each run (measured up to 1.8e-4 relative after 3
    steps on one x86 machine, 2e-6 on another): rtol 1e-3 there.
    """
    assert len(ddp) == len(single)
    np.testing.assert_allclose(ddp[0], single[0], rtol=1e-5)
    np.testing.assert_allclose(ddp, single, rtol=1e-3)


def relative_param_diff(a: nn.Module, b: nn.Module, start: nn.Module) -> float:
    """||a - b|| / ||b - start|| over floating-point parameters: the disagreement of two runs as a share of how far
    training moved the weights (a few Adam-amplified noise entries, each at most steps * lr, barely move it)."""
    pa, pb, p0 = ({k: v.detach() for k, v in m.named_parameters()} for m in (a, b, start))
    diff = sum(float((pa[k].double() - pb[k].double()).pow(2).sum()) for k in pb)
    moved = sum(float((pb[k].double() - p0[k].double()).pow(2).sum()) for k in pb)
    return (diff / moved) ** 0.5


def max_param_diff(a: nn.Module, b: nn.Module, buffers: bool = True) -> float:
    """Largest absolute difference over floating-point parameters (and buffers: BatchNorm running statistics)."""
    sa, sb = (a.state_dict(), b.state_dict()) if buffers else (dict(a.named_parameters()), dict(b.named_parameters()))
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Run the worker under torchrun with 2 CPU processes (gloo); return (output directory, combined output)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(out),
        *CLI,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return out, log


@pytest.fixture(scope="module")
def data():
    from artmed.data import make_default_dataset

    return make_default_dataset(n_train=24, n_test=5, image_size=32, seed=FIT["seed"], n_texts=20)


def test_ddp_fit_matches_single_process(ddp_run, data):
    out, log = ddp_run
    ddp = MedCLIPEstimator.load(out / "fit", device="cpu")
    single, history = fit_default(**FIT, device="cpu", verbose=False)
    record = json.loads((out / "fit" / "history.json").read_text())
    assert record["world_size"] == 2
    assert_same_losses(record["loss"], history["loss"])
    fresh = MedCLIPEstimator.tiny(single.prompts, image_size=32, seed=FIT["seed"], device="cpu")
    # Adam-amplified noise moves k entries by at most steps * lr each, while training moved all N entries by about
    # that much: the ratio stays under sqrt(k / N), 0.1 while under 1 % of the entries are noise-driven (measured
    # 6.5e-5). A per-rank loss or gradient is another run altogether: a ratio of order 1.
    assert relative_param_diff(ddp.model, single.model, fresh.model) < 0.1
    x = data.train.get_batch(np.arange(24))
    # unit embeddings; the same noise entries move them by at most ~steps * lr * sqrt(#entries) * |input| -> 1e-3
    assert np.abs(ddp.embed_images(x) - single.embed_images(x)).max() < 1e-3  # measured 1.2e-5
    texts = data.texts.sentences[:8]
    assert np.abs(ddp.embed_texts(texts) - single.embed_texts(texts)).max() < 1e-3  # measured 1.6e-6
    assert log.count("saved estimator to") == 1  # rank 0 alone wrote (and printed) the checkpoint


def test_ddp_bad_dist_matches_single_process(ddp_run):
    out, log = ddp_run
    ddp = MedCLIPEstimator.load(out / "bad_dist", device="cpu")
    single, history = load_worker().bad_dist_run("cpu")
    assert_same_losses(json.loads((out / "bad_dist" / "history.json").read_text())["loss"], history["loss"])
    assert max_param_diff(ddp.model, single.model) < 1e-5  # measured 2.3e-7
    assert history["cos_trigger"][-1] < 0.99  # the encoder did move (measured 0.96; 1.0 before)
    assert log.count("saved BadDist estimator to") == 1


def test_ddp_fine_pruning_matches_single_process(ddp_run):
    out, _ = ddp_run
    ddp = MedCLIPEstimator.load(out / "fine_pruning", device="cpu")
    record = json.loads((out / "fine_pruning" / "history.json").read_text())
    single = load_worker().fine_pruning_run("cpu")
    assert record["pruned"] == single.extra["pruned_channels"].tolist() and len(record["pruned"]) > 0
    assert_same_losses(record["loss"], single.extra["finetune_loss"])
    # Adam moves an entry by at most ~lr per step, so 4 steps at lr 1e-3 bound any noise-driven gap by 4e-3
    assert max_param_diff(ddp.model, single.estimator.model) < 5e-3  # measured 8.0e-5; training moved weights 8.8e-2
    projection = ddp.model.vision_model.model.fc.weight
    assert projection[:, record["pruned"]].abs().max() == 0  # pruned columns stayed at zero through the fine-tune


def test_ddp_cleanclip_matches_single_process(ddp_run):
    """CleanCLIP's multimodal and in-modal losses on the gathered global batch (clean rows and their augmented copies
    in one-process order), its augmentations drawn for the global batch on every rank."""
    out, _ = ddp_run
    ddp = MedCLIPEstimator.load(out / "cleanclip", device="cpu")
    history = json.loads((out / "cleanclip" / "history.json").read_text())
    single = load_worker().cleanclip_run("cpu")
    for key in ("loss", "loss_mm", "loss_ss"):
        assert_same_losses([h[key] for h in history], [h[key] for h in single.history])
    # Adam: 4 steps at lr 1e-3 bound a noise-driven gap by 4e-3; a per-rank loss would differ in the first step
    assert max_param_diff(ddp.model, single.estimator.model) < 5e-3


def test_shards_cover_the_global_batch_in_order():
    batch = np.arange(10, 21)
    for world in (1, 2, 3, 4):
        shards = [D.shard_indices(batch, r, world) for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(shards), batch)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
        D.shard_slice(2, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        D.shard_slice(8, 2, 2)


def test_helpers_are_identities_outside_a_process_group(monkeypatch):
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main_process()
    t = torch.randn(3, 4, requires_grad=True)
    assert D.gather(t) is t
    module = nn.BatchNorm1d(4)
    assert D.wrap_ddp(module, torch.device("cpu")) is module
    with D.global_batchnorm(module) as inside:
        assert inside is module
    np.testing.assert_array_equal(D.shard_indices(np.arange(5)), np.arange(5))
    assert float(D.all_reduce_mean(torch.tensor(2.5))) == 2.5
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.init_from_env("gloo").type in ("cpu", "cuda") and not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="backend"):
        D.init_from_env("mpi")


def test_on_rank0_runs_only_on_rank0(monkeypatch):
    calls = []
    save = D.on_rank0(lambda path: calls.append(path) or "written")
    assert save("a") == "written"
    monkeypatch.setattr(D, "rank", lambda: 1)
    assert save("b") is None
    assert calls == ["a"]


def test_global_batchnorm_shares_tensors_and_restores(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    original = model[1]
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    with D.global_batchnorm(model):
        swapped = model[1]
        assert isinstance(swapped, D.GlobalBatchNorm)
        assert swapped.weight is original.weight and swapped.running_mean is original.running_mean
        model.eval()
    assert model[1] is original and not original.training


def test_cli_help_and_text_dropout(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0 and "--text-dropout" in capsys.readouterr().out
    est = MedCLIPEstimator.tiny({"a": ["x"], "b": ["y"]}, image_size=32, device="cpu")
    set_text_dropout(est.model, 0.0)
    assert all(m.p == 0.0 for m in est.model.text_model.modules() if isinstance(m, nn.Dropout))
    with pytest.raises(ValueError, match="dropout"):
        set_text_dropout(est.model, 1.5)


def test_a_whole_study_under_torchrun(tmp_path):
    """``torchrun -m artmed.evaluations.cli run``: both ranks run the quick study (training data-parallel), rank 0
    alone prints and writes, every cell records the world size, and a second launch resumes every cell."""
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def launch() -> str:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "artmed.evaluations.cli",
            "run",
            "--preset",
            "quick",
            "--output",
            str(out),
            "--quiet",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        return log

    log = launch()
    assert log.count("Attacked models, per seed") == 1 and log.count("Tables and figures in") == 1
    models = json.loads((out / "models.json").read_text())
    assert [m["status"] for m in models] == ["ok", "ok"] and {m["world_size"] for m in models} == {2}
    cells = sorted(p.name for p in (out / "cells" / "model").glob("*.json"))
    assert len(cells) == 3  # the base model and the two attack settings, each written once
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    launch()
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")} == stamps  # resumed, not recomputed
