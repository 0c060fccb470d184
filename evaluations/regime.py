"""The paper's regime (``artmed run --preset regime``): does the backdoor depend on the poison *rate* or on the
*number* of poisoned images?

Two axes, each point a study cell run over the seeds: (a) the rate at a fixed training-set size (``REGIME_SIZE``
images, ``REGIME_COUNTS`` of them poisoned) and (b) the training-set size at a fixed number of poisoned images
(``REGIME_COUNT`` in each of ``REGIME_SIZES``, down to the paper's 0.05 %). Both attacks (BadMatch, BadDist +
BadMatch) with both triggers (the patch and the released, unnormalised Fourier trigger) at every point, and every
built-in detector, input screen and mitigation on every attacked model. A training-set size is its own study (its
own data draw and base model per seed) in ``output_dir/n<size>``; the victim's schedule scales with the size so that
every size sees each image as often as the default study's 300 steps of 64 over 2000 images (9.6 passes).
``write_regime`` gathers the sub-studies into one model table, one defense-verdict table and the figures (ASR and CA
against rate, count and size, with 95 % intervals). ``load_regime`` reads a regime file: any study config (real data,
a GPU) as the template, with the axes under ``regime:``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from artmed.attacks.pipeline import AttackSpec
from artmed.evaluations.aggregate import format_summary, summarize
from artmed.evaluations.config import StudyConfig, read_config_file
from artmed.evaluations.engine import DEFAULT_THREADS
from artmed.evaluations.report import flatten_record, save_figure, write_table
from artmed.evaluations.store import atomic_write
from artmed.evaluations.study import DEFAULT_SEEDS, _seeds, default_config, run_study
from artmed.evaluations.verdicts import format_verdicts, verdicts

__all__ = [
    "REGIME_ATTACKS",
    "REGIME_COUNT",
    "REGIME_COUNTS",
    "REGIME_SIZE",
    "REGIME_SIZES",
    "REGIME_TRIGGERS",
    "Regime",
    "RegimeResult",
    "regime_configs",
    "run_regime",
    "load_regime",
    "read_regime",
    "trigger_baselines",
    "verdict_map",
    "plot_regime",
    "write_regime",
]

REGIME_SIZE = 1000
"""Axis (a)'s training-set size."""
REGIME_COUNTS: tuple[int, ...] = (1, 5, 20)
"""Axis (a)'s poisoned images: 0.1 %, 0.5 % and 2 % of ``REGIME_SIZE``."""
REGIME_COUNT = 1
"""Axis (b)'s poisoned images, the same at every size."""
REGIME_SIZES: tuple[int, ...] = (500, 1000, 2000)
"""Axis (b)'s training-set sizes: ``REGIME_COUNT`` of them is 0.2 %, 0.1 % and the paper's 0.05 %."""
REGIME_ATTACKS: tuple[str, ...] = ("badmatch", "baddist_badmatch")
REGIME_TRIGGERS: dict[str, dict[str, Any]] = {"patch": {}, "fourier": {"unnormalized": True}}
"""The patch and the released Fourier trigger (fed to the model without its normalisation, as the release does)."""


@dataclass(frozen=True)
class Regime:
    """The two axes: (a) ``counts`` poisoned images in ``size`` training images; (b) ``count`` poisoned images in
    each of ``sizes`` training images; each point runs every one of ``attacks`` with every one of ``triggers``
    (``REGIME_TRIGGERS`` names them with their parameters)."""

    size: int = REGIME_SIZE
    counts: tuple[int, ...] = REGIME_COUNTS
    count: int = REGIME_COUNT
    sizes: tuple[int, ...] = REGIME_SIZES
    attacks: tuple[str, ...] = REGIME_ATTACKS
    triggers: tuple[str, ...] = tuple(REGIME_TRIGGERS)

    def __post_init__(self) -> None:
        for name, values in (
            ("size", [self.size]),
            ("counts", self.counts),
            ("count", [self.count]),
            ("sizes", self.sizes),
        ):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"regime {name} must be positive integers, got {getattr(self, name)!r}")
        unknown = [t for t in self.triggers if t not in REGIME_TRIGGERS]
        if unknown or not self.triggers or not self.attacks:
            raise ValueError(f"regime triggers must be some of {list(REGIME_TRIGGERS)} and attacks non-empty")
        too_many = [(n, c) for n, c in self.points() if c > n]
        if too_many:
            raise ValueError(f"regime point(s) with more poisoned images than training images: {too_many}")

    def points(self) -> list[tuple[int, int]]:
        """Every (training-set size, poisoned images) run, each once, by size then count."""
        return sorted({*((self.size, c) for c in self.counts), *((n, self.count) for n in self.sizes)})

    def on_axis(self, axis: str, n_train: int, n_poison: int) -> bool:
        """Whether the point belongs to axis ``"a"`` (the fixed size) or ``"b"`` (the fixed count)."""
        return n_train == self.size if axis == "a" else n_poison == self.count

    def configs(
        self, output_dir: str = "artmed-regime", template: StudyConfig | None = None, seeds: Sequence[int] | None = None
    ) -> list[StudyConfig]:
        """One study per training-set size (``output_dir/n<size>``): a clean victim (the CA reference) and each
        attack × trigger at that size's counts, every defense on every attacked model (not on the clean one).

        ``template`` is the study every size starts from: its data (``data.n_train`` replaced by the size), model,
        pretraining, tasks, evaluation, device, protocol and defenses; each attack takes the parameters of the
        template's first attack of that shorthand, each trigger those of its first attack with that trigger
        (``REGIME_TRIGGERS``' otherwise); its ``train.steps`` are the schedule at its ``data.n_train`` images,
        scaled to each size so that every size sees each image as often. Default: the default study (300 steps at
        2000 phantoms, the tiny BadDist settings, every built-in defense). ``seeds``: default the template's (the
        default study's 0, 1, 2)."""
        base = template if template is not None else default_config(output_dir)
        reference = base.data.n_train
        if reference is None:
            raise ValueError(
                "the regime's study needs data.n_train: the training-set size its train.steps are for (each size's "
                "schedule is scaled from it)"
            )
        seed_list = list(base.seed_list if seeds is None else seeds)
        firsts = {spec.attack: spec for spec in reversed(base.attacks)}
        trigger_params = {s.trigger: s.trigger_params for s in reversed(base.attacks) if s.attack != "clean"}
        defenses = [
            replace(spec, attacks=[a for a in self.attacks if spec.runs_on(a)])
            for spec in base.defenses
            if any(spec.runs_on(a) for a in self.attacks)
        ]
        configs = []
        for n_train in sorted({n for n, _ in self.points()}):
            attacks = [replace(firsts["clean"]) if "clean" in firsts else AttackSpec("clean")]
            for count in (c for n, c in self.points() if n == n_train):
                for trigger in self.triggers:
                    for attack in self.attacks:
                        point: dict[str, Any] = {
                            "trigger": trigger,
                            "trigger_params": dict(trigger_params.get(trigger, REGIME_TRIGGERS[trigger])),
                            "percent_poison": count / n_train,
                        }
                        attacks.append(
                            replace(firsts[attack], **point) if attack in firsts else AttackSpec(attack, **point)
                        )
            configs.append(
                replace(
                    base,
                    seed=seed_list[0],
                    seeds=seed_list,
                    output_dir=str(Path(output_dir) / f"n{n_train}"),
                    data=replace(base.data, n_train=n_train),
                    train=replace(base.train, steps=max(1, round(base.train.steps * n_train / reference))),
                    attacks=attacks,
                    defenses=defenses,
                )
            )
        return configs


def regime_configs(output_dir: str = "artmed-regime", seed: int = 0, n_seeds: int = DEFAULT_SEEDS) -> list[StudyConfig]:
    """The built-in regime's studies over seeds ``seed``, ..., ``seed + n_seeds - 1`` (``Regime().configs``)."""
    return Regime().configs(output_dir, seeds=_seeds(seed, n_seeds))


def load_regime(path: str | Path, protocol: str | None = None) -> tuple[Regime, StudyConfig]:
    """A regime file: a study config (the template of ``Regime.configs``; under ``protocol`` when given) with a
    ``regime:`` mapping of ``Regime``'s fields (``size``, ``counts``, ``count``, ``sizes``, ``attacks``,
    ``triggers``; the built-in values where absent). An unknown field is a ValueError naming it."""
    raw = read_config_file(path)
    fields = raw.pop("regime", None) or {}
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: regime must be a mapping of {list(Regime.__dataclass_fields__)}")
    unknown = sorted(set(fields) - set(Regime.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{path}: unknown regime field(s) {unknown}; valid: {list(Regime.__dataclass_fields__)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    regime = Regime(**values)
    template = StudyConfig.from_dict(raw if protocol is None else {**raw, "protocol": protocol})
    return regime, template


@dataclass
class RegimeResult:
    """The finished regime: the sub-studies' records (each with ``n_train``), failures, and the written files."""

    models: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    interrupted: bool
    paths: dict[str, Path]


def run_regime(
    output_dir: str, configs: Sequence[StudyConfig], regime: Regime | None = None, **run_options: Any
) -> RegimeResult:
    """Run (or resume) each sub-study of ``regime`` (default the built-in one) with ``run_study(config,
    **run_options)``, then ``write_regime``; an interrupted sub-study stops the rest."""
    failed: list[dict[str, Any]] = []
    interrupted = False
    for config in configs:
        result, _ = run_study(config, **run_options)
        failed += result.failed
        if result.interrupted:
            interrupted = True
            break
    regime = regime or Regime()
    models, defenses = read_regime([Path(c.output_dir) for c in configs])
    baseline_options = {k: run_options[k] for k in ("reuse_stale", "threads") if k in run_options}
    models += trigger_baselines(configs, regime, **baseline_options)
    paths = write_regime(Path(output_dir), models, defenses, regime)
    return RegimeResult(models, defenses, failed, interrupted, paths)


def trigger_baselines(
    configs: Sequence[StudyConfig], regime: Regime, reuse_stale: bool = False, threads: int | None = DEFAULT_THREADS
) -> list[dict[str, Any]]:
    """What each trigger alone does: every finished clean model of the sub-studies scored under each of the
    regime's triggers (the trigger and target of the study's first attack with it), one record per size, seed and
    trigger (``attack`` "clean", ``trigger`` set, ``n_poison`` 0). An attacked model's ASR means a backdoor only
    where it clears this. ``reuse_stale``: score clean models that other artmed code saved; ``threads``: as the
    sub-studies ran (``Harness``)."""
    from artmed.evaluations.harness import Harness

    records: list[dict[str, Any]] = []
    for config in configs:
        clean = next((spec for spec in config.attacks if spec.attack == "clean"), None)
        unders = {
            t: next((s for s in config.attacks if s.trigger == t and s.attack != "clean"), None)
            for t in regime.triggers
        }
        if clean is None:
            continue
        harness = Harness(config, verbose=False, reuse_stale=reuse_stale, threads=threads)
        for seed in config.seed_list:
            if not (Path(config.output_dir) / "models" / config.attack_key(replace(clean, seed=seed))).exists():
                continue
            run = harness.load_data(seed)
            for trigger, under in unders.items():
                if under is None:
                    continue
                scores = harness.score_saved(run, clean, under)
                record = {"attack": "clean", "trigger": trigger, "n_train": config.data.n_train, "n_poison": 0}
                records.append({**record, "percent_poison": 0.0, "seed": seed, **flatten_record(scores)})
    return records


def read_regime(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The finished model and defense records of the sub-study ``folders`` (their models.json / defenses.json),
    each with ``n_train`` (its study's training-set size) and ``n_poison`` (its model's poisoned images)."""
    models: list[dict[str, Any]] = []
    defenses: list[dict[str, Any]] = []
    for folder in folders:
        if not (folder / "models.json").exists():
            continue
        mine = [r for r in json.loads((folder / "models.json").read_text()) if r.get("status", "ok") == "ok"]
        for record in mine:
            record["n_train"] = int(record["settings.data.n_train"])
        poisoned = {r["attack_key"]: r.get("n_poison", 0) for r in mine}
        models += mine
        path = folder / "defenses.json"
        for record in json.loads(path.read_text()) if path.exists() else []:
            if record.get("status", "ok") != "ok" or record.get("attack_key") not in poisoned:
                continue
            record["n_train"] = int(record["settings.data.n_train"])
            record["n_poison"] = poisoned[record["attack_key"]]
            defenses.append(record)
    return models, defenses


MODEL_KEYS = ("attack", "trigger", "n_train", "n_poison", "percent_poison")
MODEL_METRICS = ("ca", "asr", "asr_all", "ra")
VERDICT_KEYS = ("attack", "trigger", "n_train", "n_poison", "defense")


def write_regime(
    output_dir: Path, models: Sequence[Mapping[str, Any]], defenses: Sequence[Mapping[str, Any]], regime: Regime
) -> dict[str, Path]:
    """``regime_models.csv/json`` (per seed), ``regime_summary.md`` (models: mean ± std [95 % interval] per point;
    defenses: each one's deciding statistic per seed and verdict per point) and the figures ``regime_rate.png``,
    ``regime_count.png`` and ``regime_size.png`` under ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ordered = sorted(models, key=lambda r: tuple(_order(r.get(k)) for k in (*MODEL_KEYS, "seed")))
    paths["models_json"], paths["models_csv"] = write_table(ordered, output_dir, "regime_models")
    rows = summarize(ordered, MODEL_KEYS, MODEL_METRICS)
    judged = verdicts(
        sorted(defenses, key=lambda r: tuple(_order(r.get(k)) for k in (*VERDICT_KEYS, "seed"))), VERDICT_KEYS
    )
    text = (
        "Attacked models per regime point, mean ± std over seeds [95 % t-interval of the mean, kept inside [0, 1]];"
        " clean rows: the clean model at each size (trigger -: as its study scored it) and under each trigger alone"
        " (`trigger_baselines`: an attacked model's ASR is a backdoor only where it clears its trigger's):\n\n"
        + format_summary(rows, MODEL_KEYS, MODEL_METRICS)
        + "\n\n"
        + verdict_map(judged, regime)
        + "\n\nEach defense's deciding statistic per seed and verdict per point (`artmed.evaluations.verdicts`):\n\n"
        + format_verdicts(judged, keys=VERDICT_KEYS)
        + "\n"
    )
    paths["summary"] = atomic_write(output_dir / "regime_summary.md", text)
    figures = output_dir / "figures"
    figures.mkdir(exist_ok=True)
    attacked = [r for r in rows if (r.get("n_poison") or 0) > 0]
    clean = [r for r in rows if r.get("attack") == "clean"]
    drawn = {
        "rate": ("percent_poison", "poison rate", (("a", "-"), ("b", "--")), "ASR and CA against the poison rate"),
        "count": ("n_poison", "poisoned images", (("a", "-"),), f"ASR and CA against the count ({regime.size} images)"),
        "size": (
            "n_train",
            "training-set size",
            (("b", "--"),),
            f"ASR and CA against the size ({regime.count} poisoned)",
        ),
    }
    for name, (x, xlabel, axes, title) in drawn.items():
        path = plot_regime(attacked, figures / f"regime_{name}.png", regime, x, xlabel, axes, title, clean)
        if path is not None:
            paths[f"figure_{name}"] = path
    return paths


def verdict_map(judged: Sequence[Mapping[str, Any]], regime: Regime) -> str:
    """A markdown table of the ``verdicts`` rows: a row per defense, a column per attack × trigger, and in each cell
    one letter per regime point in ``Regime.points`` order: Y detects / mitigates, N does not, ? inconclusive,
    - not run."""
    letters = {"detects": "Y", "mitigates": "Y", "does not detect": "N", "does not mitigate": "N"}
    columns = sorted({(str(r["attack"]), str(r["trigger"])) for r in judged})
    defenses = list(dict.fromkeys(str(r["defense"]) for r in judged))
    found = {(str(r["defense"]), str(r["attack"]), str(r["trigger"]), r["n_train"], r["n_poison"]): r for r in judged}
    points = regime.points()
    lines = [
        "Verdicts per point, one letter each in the order "
        + ", ".join(f"{count} of {n}" for n, count in points)
        + " (poisoned of training images): Y detects / mitigates on every seed, N does not on any, ? inconclusive:",
        "",
        "| defense | " + " | ".join(f"{attack} · {trigger}" for attack, trigger in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for defense in defenses:
        cells = []
        for attack, trigger in columns:
            marks = [found.get((defense, attack, trigger, n, count)) for n, count in points]
            cells.append("`" + "".join("-" if r is None else letters.get(r["verdict"], "?") for r in marks) + "`")
        lines.append(f"| {defense} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _series(rows: Sequence[Mapping[str, Any]], regime: Regime, axis: str) -> dict[str, list[Mapping[str, Any]]]:
    """Each attack × trigger's rows on ``axis`` ("a": the fixed size, "b": the fixed count), in the axis's order;
    a line needs two or more points."""
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if regime.on_axis(axis, int(row["n_train"]), int(row["n_poison"])):
            lines.setdefault(f"{row['attack']} · {row['trigger']}", []).append(row)
    key = "n_poison" if axis == "a" else "n_train"
    return {line: sorted(mine, key=lambda r: r[key]) for line, mine in lines.items() if len(mine) > 1}


def _draw(ax: Any, rows: Sequence[Mapping[str, Any]], x: str, metric: str, label: str, style: str, color: str) -> None:
    """One line of ``metric`` means against ``x``, its 95 % intervals (``<metric>_lo/_hi``) as error bars (none for
    one seed)."""
    points = [r for r in rows if math.isfinite(float(r.get(metric, math.nan)))]
    if len(points) < 2:
        return
    ys = [float(r[metric]) for r in points]
    lo = [float(r.get(f"{metric}_lo", math.nan)) for r in points]
    hi = [float(r.get(f"{metric}_hi", math.nan)) for r in points]
    below = [y - b if math.isfinite(b) else 0.0 for y, b in zip(ys, lo)]
    above = [b - y if math.isfinite(b) else 0.0 for y, b in zip(ys, hi)]
    xs = [float(r[x]) for r in points]
    ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, linestyle=style, color=color, label=label)


def plot_regime(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    regime: Regime,
    x: str,
    xlabel: str,
    axes: Sequence[tuple[str, str]],
    title: str,
    clean: Sequence[Mapping[str, Any]] = (),
) -> Path | None:
    """ASR and CA panels against ``x`` (log scale) for each (axis, line style) of ``axes``, one colour per attack ×
    trigger; None (no file) when no line has two points. Against the rate, axis (a) (more poisoned images) is solid
    and axis (b) (more clean images around one count) dashed: where the backdoor follows the rate, they coincide.
    The ``clean`` models' rows are drawn dotted as references (``_references``)."""
    series = [(axis, style, _series(rows, regime, axis)) for axis, style in axes]
    names = sorted({line for _, _, lines in series for line in lines})
    if not names:
        return None
    colors = {line: f"C{i}" for i, line in enumerate(names)}
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, metric, name in zip(panels, ("asr", "ca"), ("attack success rate (ASR)", "clean accuracy (CA)")):
        for axis, style, lines in series:
            for line, mine in lines.items():
                where = f"{regime.size} images" if axis == "a" else f"{regime.count} poisoned"
                _draw(ax, mine, x, metric, f"{line}, {where}", style, colors[line])
        _references(ax, clean, regime, x, metric)
        ax.set(xlabel=xlabel, ylabel=name, ylim=(-0.02, 1.05))
        ax.set_xscale("log")
        ticks = sorted({float(r[x]) for _, _, lines in series for mine in lines.values() for r in mine})
        ax.set_xticks(ticks, [f"{t:.2%}" if x == "percent_poison" else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    for ax in panels:
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title} (mean over seeds, 95 % t-interval)")
    return save_figure(fig, path)


def _references(ax: Any, clean: Sequence[Mapping[str, Any]], regime: Regime, x: str, metric: str) -> None:
    """The clean models dotted, grey: against the size a line over the sizes, else a level at axis (a)'s size. ASR:
    each trigger's baseline (``trigger_baselines``: the trigger alone); CA: the clean model's."""
    rows = (
        [r for r in clean if r.get("trigger") is not None]
        if metric == "asr"
        else [r for r in clean if r.get("trigger") is None]
    )
    for i, trigger in enumerate(sorted({str(r.get("trigger")) for r in rows})):
        mine = sorted((r for r in rows if str(r.get("trigger")) == trigger), key=lambda r: r["n_train"])
        label = f"clean model · {trigger} (no poison)" if metric == "asr" else "clean model"
        style = {"color": "0.45" if i == 0 else "0.7", "linestyle": ":", "linewidth": 1.5}
        if x == "n_train":
            ax.plot([r["n_train"] for r in mine], [r[metric] for r in mine], marker="x", label=label, **style)
        else:
            level = [r[metric] for r in mine if r["n_train"] == regime.size]
            if level:
                ax.axhline(level[0], label=f"{label}, {regime.size} images", **style)
