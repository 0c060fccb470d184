"""The default study behind ``artmed run``: presets of ``StudyConfig`` and writing its table and figures.

``default_config()`` is the few-minute CPU study (clean vs attacked tiny MedCLIPs, every built-in defense);
``sweep_config()`` adds the seed paper's poison-rate sweep (0.05 % to 5 %, patch and Fourier triggers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from artmed.attacks.pipeline import AttackSpec
from artmed.data.phantom_plot import save_phantom_grid
from artmed.distributed import barrier, is_main_process
from artmed.evaluations.aggregate import (
    DEFENSE_KEYS,
    DEFENSE_METRICS,
    MODEL_KEYS,
    MODEL_METRICS,
    SHOWN_DETECTION_METRICS,
    SHOWN_INPUT_METRICS,
    SHOWN_MITIGATION_METRICS,
    SHOWN_MODEL_METRICS,
    SHOWN_VERDICT_METRICS,
    format_summary,
    summarize,
)
from artmed.evaluations.compare import trajectories
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.engine import DEFAULT_THREADS
from artmed.evaluations.harness import Harness, StudyResult
from artmed.evaluations.report import (
    format_table,
    plot_baddist_separation,
    plot_ca_asr_bars,
    plot_feature_projection,
    plot_inverted_trigger,
    plot_mean_roc,
    plot_poison_rate_sweep,
    plot_score_histograms,
    plot_tradeoff,
    plot_trigger_examples,
    write_table,
)
from artmed.evaluations.store import folder_lock
from artmed.evaluations.verdicts import format_verdicts, verdicts

MODEL_COLUMNS = [
    "attack",
    "trigger",
    "percent_poison",
    "seed",
    "status",
    "n_poison",
    "ca",
    "asr",
    "asr_all",
    "ra",
    "heldout_cos_clean",
    "heldout_cos_trigger",
]
DEFENSE_COLUMNS = [
    "attack",
    "trigger",
    "percent_poison",
    "seed",
    "defense",
    "status",
    "auroc",
    "tpr",
    "fpr",
    "f1",
    "removed",
    "ca_after",
    "asr_after",
    "der",
    "seconds",
    "peak_mb",
]
INPUT_COLUMNS = [
    "attack",
    "trigger",
    "percent_poison",
    "seed",
    "defense",
    "status",
    "auroc",
    "far_frr1",
    "far_frr5",
    "frr",
    "far",
    "seconds",
]
VERDICT_COLUMNS = [
    "attack",
    "trigger",
    "percent_poison",
    "seed",
    "defense",
    "status",
    "model_score",
    "threshold",
    "model_flagged",
    "backdoored",
    "mask_overlap",
    "seconds",
]
SWEEP_RATES: tuple[float, ...] = (0.0005, 0.001, 0.005, 0.01, 0.05)
DEFAULT_SEEDS = 3


def _attack(attack: str, trigger: str = "patch", rate: float = 0.01) -> AttackSpec:
    params = {"settings": "tiny"} if "baddist" in attack else {}
    return AttackSpec(attack=attack, trigger=trigger, percent_poison=rate, baddist_params=params)


TINY_FINETUNE: dict[str, Any] = {"lr": 1e-3, "batch_size": 64}
"""Fine-tuning mitigations on the tiny preset use its training learning rate (the defaults suit released MedCLIP)."""


def default_defenses() -> list[DefenseSpec]:
    """The built-in defenses (ART's two detectors beside ours); the mitigations run on the models BadMatch poisoned,
    tuned to the tiny preset's learning rate. DECREE is left out: on tiny encoders it flags clean ones too (measured)
    and its trigger search costs more than the rest of the study."""
    poisoned = ["badmatch", "baddist_badmatch"]
    return [
        DefenseSpec("spectral_signatures"),
        DefenseSpec("activation_clustering"),
        DefenseSpec("art_spectral_signatures"),
        DefenseSpec("art_activation_clustering"),
        DefenseSpec("spectre"),
        DefenseSpec("scan"),
        DefenseSpec("strip", {"verbose": False}),
        DefenseSpec("fine_pruning", {**TINY_FINETUNE, "finetune_steps": 100}, attacks=poisoned),
        DefenseSpec("cleanclip", {**TINY_FINETUNE, "steps": 100, "verbose": False}, attacks=poisoned),
    ]


VICTIM_STEPS = 300
"""The victim's unpaired training in the built-in studies: 300 steps (~10 passes over the 20 poisoned images).
At 150 steps BadDist+BadMatch sat on a knife edge: the same base model gave ASR 1.00 with AVX-512 kernels and 0.26
with AVX2 ones (seed 2); at 300 steps both gave 1.00."""


def _seeds(seed: int, n_seeds: int) -> list[int]:
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"the number of seeds must be a positive integer, got {n_seeds!r}")
    return list(range(seed, seed + n_seeds))


def default_config(output_dir: str = "artmed-output", seed: int = 0, n_seeds: int = DEFAULT_SEEDS) -> StudyConfig:
    """The few-minute CPU study: clean, BadMatch, BadDist and BadDist+BadMatch (patch, 1 %), all defenses, over
    ``n_seeds`` replicates (seeds ``seed``, ``seed + 1``, ...)."""
    attacks = [_attack("clean"), _attack("badmatch"), _attack("baddist"), _attack("baddist_badmatch")]
    return StudyConfig(
        seed=seed,
        seeds=_seeds(seed, n_seeds),
        output_dir=output_dir,
        train=TrainConfig(steps=VICTIM_STEPS),
        attacks=attacks,
        defenses=default_defenses(),
    )


def sweep_config(output_dir: str = "artmed-sweep", seed: int = 0, n_seeds: int = DEFAULT_SEEDS) -> StudyConfig:
    """The seed paper's grid: BadMatch and BadDist+BadMatch x patch/Fourier x poison rates 0.05 %-5 %."""
    attacks = [_attack("clean")]
    for trigger in ("patch", "fourier"):
        attacks.append(_attack("baddist", trigger))
        for attack in ("badmatch", "baddist_badmatch"):
            attacks += [_attack(attack, trigger, rate) for rate in SWEEP_RATES]
    return StudyConfig(
        seed=seed,
        seeds=_seeds(seed, n_seeds),
        output_dir=output_dir,
        train=TrainConfig(steps=VICTIM_STEPS),
        attacks=attacks,
        defenses=[],
    )


def quick_config(output_dir: str, seed: int = 0, n_seeds: int = 1) -> StudyConfig:
    """A seconds-long study for tests and smoke runs (tiny data, few steps, the fast defenses)."""
    baddist = {"lr": 1e-2, "steps": 10, "batch_size": 16}
    attacks = [AttackSpec("clean"), AttackSpec("baddist_badmatch", percent_poison=0.05, baddist_params=baddist)]
    return StudyConfig(
        seed=seed,
        seeds=_seeds(seed, n_seeds),
        output_dir=output_dir,
        data=DataConfig(n_train=160, n_test=40, n_shadow=32, image_size=32),
        pretrain=TrainConfig(steps=10, batch_size=16),
        train=TrainConfig(steps=10, batch_size=16),
        attacks=attacks,
        defenses=[DefenseSpec("spectral_signatures"), DefenseSpec("activation_clustering")],
    )


def write_outputs(result: StudyResult) -> dict[str, Path]:
    """Tables (JSON + CSV) and figures for a finished study; returns the written paths by name.

    Detection ROCs are averaged over seeds, one figure per attacked setting (``roc_<setting>``); a figure with
    nothing to compare is not written and its ``NoFigureWarning`` says why (``artmed.evaluations.report``)."""
    out = result.output_dir
    paths: dict[str, Path] = {}
    paths["models_json"], paths["models_csv"] = write_table(result.models, out, name="models")
    paths["models_summary_json"], paths["models_summary_csv"] = write_table(
        model_summary(result), out, name="models_summary"
    )
    if result.defenses:
        paths["defenses_json"], paths["defenses_csv"] = write_table(result.defenses, out, name="defenses")
        paths["defenses_summary_json"], paths["defenses_summary_csv"] = write_table(
            defense_summary(result), out, name="defenses_summary"
        )
    figures = out / "figures"
    models = _ok(result.models)
    drawn = {
        "separation": plot_baddist_separation(models, figures / "baddist_separation.png"),
        "triggers": plot_trigger_examples(figures / "triggers.png"),
    }
    if len({m.get("percent_poison") for m in models if m.get("attack") != "clean"}) >= 2:  # a sweep, not one point
        drawn["sweep"] = plot_poison_rate_sweep(models, figures / "poison_rate_sweep.png")
    ok = _ok(result.defenses)
    mitigations = [r for r in ok if r.get("kind") == "mitigation"]
    if any(r.get("ca_after") is not None for r in ok):
        drawn["bars"] = plot_ca_asr_bars(ok, figures / "ca_asr_before_after.png")
    if mitigations:
        drawn["tradeoff"] = plot_tradeoff(trajectories(mitigations), figures / "mitigation_tradeoff.png")
    by_setting: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for record in ok:
        arrays = result.arrays.get(record["cell"]) or {}
        if "scores" in arrays and np.asarray(arrays["poison_mask"]).any():
            by_setting.setdefault(_setting_key(record["attack_key"]), {}).setdefault(record["defense"], []).append(
                (np.asarray(arrays["scores"]), np.asarray(arrays["poison_mask"]))
            )
    for key, curves in by_setting.items():
        drawn[f"roc_{key}"] = plot_mean_roc(curves, figures / f"roc_{key}.png", title=f"{key} (mean over seeds)")
        first = {name: seeds[0] for name, seeds in curves.items()}
        drawn[f"hist_{key}"] = plot_score_histograms(
            first, None, figures / f"scores_{key}.png", title=f"{key} (first seed)"
        )
    for record in ok:
        arrays = result.arrays.get(record["cell"]) or {}
        if record.get("kind") == "model" and "mask" in arrays:
            title = (
                f"{record['defense']} on {record['attack_key']}: score {record['model_score']:.3g}, "
                f"{'flagged' if record['model_flagged'] else 'not flagged'}"
            )
            name = f"inverted_{record['attack_key']}+{record['defense']}"
            drawn[name] = plot_inverted_trigger(
                arrays["mask"], arrays.get("pattern"), figures / f"{name}.png", title=title
            )
    for key, (features, mask) in result.projections.items():
        drawn[f"proj_{key}"] = plot_feature_projection(features, mask, figures / f"features_{key}.png", title=key)
    drawn["phantoms"] = save_phantom_grid(figures / "phantoms.png", image_size=128, seed=0)
    return {**paths, **{name: path for name, path in drawn.items() if path is not None}}


def _setting_key(attack_key: str) -> str:
    """An attacked model's key without its seed ("badmatch-patch-p0.01-s2" -> "badmatch-patch-p0.01")."""
    return re.sub(r"-s\d+$", "", attack_key)


def model_summary(result: StudyResult) -> list[dict[str, Any]]:
    """The attacked models over seeds: mean, std and 95 % interval per setting (``artmed.evaluations.aggregate``);
    failed cells are left out (``n`` counts the seeds that finished) and listed by ``summary``."""
    return summarize(_ok(result.models), MODEL_KEYS, MODEL_METRICS)


def defense_summary(result: StudyResult) -> list[dict[str, Any]]:
    """The defenses over seeds (finished cells only; failures stay in the per-seed table)."""
    return summarize(_ok(result.defenses), DEFENSE_KEYS, DEFENSE_METRICS)


def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status", "ok") == "ok"]


def summary(result: StudyResult) -> str:
    """The terminal summary: per-seed rows, then every setting's mean ± std [95 % interval] over the seeds."""
    text = "Attacked models, per seed (zero-shot task: CA / ASR)\n" + format_table(result.models, MODEL_COLUMNS)
    text += "\n\nAttacked models over seeds: mean ± std [95 % interval]\n"
    text += format_summary(model_summary(result), MODEL_KEYS[:3], SHOWN_MODEL_METRICS)
    by_kind = {kind: [d for d in result.defenses if d.get("kind") == kind] for kind in ("input", "model")}
    per_seed = [d for d in result.defenses if d.get("kind") not in by_kind]
    if per_seed:
        text += "\n\nDefenses, per seed\n" + format_table(per_seed, DEFENSE_COLUMNS)
    for kind, title, columns in (
        ("input", "Input screens (clean vs triggered test inputs)", INPUT_COLUMNS),
        ("model", "Model verdicts", VERDICT_COLUMNS),
    ):
        if by_kind[kind]:
            text += f"\n\n{title}, per seed\n" + format_table(by_kind[kind], columns)
    if result.defenses:
        text += "\n\nDefenses over seeds: mean ± std [95 % interval]\n"
        text += format_summary(
            defense_summary(result),
            DEFENSE_KEYS[:3] + ("defense",),
            SHOWN_DETECTION_METRICS + SHOWN_MITIGATION_METRICS + SHOWN_INPUT_METRICS[1:] + SHOWN_VERDICT_METRICS,
        )
        rows = verdicts(_ok(result.defenses))
        if rows:
            text += "\n\nVerdicts over seeds (artmed.evaluations.verdicts)\n" + format_verdicts(
                rows, DEFENSE_KEYS[:3] + ("defense",)
            )
    if result.failed:
        text += f"\n\n{len(result.failed)} cell(s) did not finish (left out of the means above):"
        text += "".join(f"\n  {r['cell']}: {r.get('status')}: {r.get('error')}" for r in result.failed)
    if result.interrupted:
        text += "\n\nThe study was interrupted: these tables are partial; run it again to resume."
    return text


def run_study(
    config: StudyConfig,
    verbose: bool = True,
    reuse_stale: bool = False,
    workers: int | None = None,
    threads: int | None = DEFAULT_THREADS,
    address: str | None = None,
) -> tuple[StudyResult, dict[str, Path]]:
    """Run (or resume) a study and write its outputs. Under ``torchrun`` every rank runs it (training data-parallel,
    the rest repeated) and rank 0 alone writes and shows progress; the other ranks get no paths. ``workers``,
    ``threads``, ``address``: as ``Harness`` takes them (cells in Ray tasks)."""
    harness = Harness(
        config,
        verbose=verbose and is_main_process(),
        reuse_stale=reuse_stale,
        workers=workers,
        threads=threads,
        address=address,
    )
    with folder_lock(harness.output_dir):  # held over the tables too: no other run writes the folder meanwhile
        result = harness.run()
        paths = write_outputs(result) if is_main_process() else {}
    barrier()
    return result, paths
