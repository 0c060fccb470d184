"""The detection benchmark: our detectors against ART's on the same synthetic cached features, and their scaling."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from artmed.evaluations.bench.machine import _timed

LAYER = "image_pooled"
LINEAR_SPREAD = 2.0
"""Cost counts as at most linear in N when no larger size's seconds-per-sample exceeds a smaller size's by more than
this factor."""
MIN_SIZE = 500
MIN_GROUP = 20
MEMORY_BUDGET_MB = 2048.0


@dataclass
class Planted:
    """Synthetic cached features: (N, D) float32, (N, 14) label rows, the ground-truth poison mask."""

    features: np.ndarray
    labels: np.ndarray
    poison_mask: np.ndarray


def synthetic_features(
    n: int,
    dim: int = 512,
    n_groups: int = 4,
    poison_share: float = 0.01,
    shift: float = 15.0,
    seed: int = 0,
    chunk: int = 16384,
) -> Planted:
    """Seeded features of `n_groups` label groups (sizes in ratio n_groups : ... : 1, each a Gaussian with rank-20
    structure plus unit noise) with `poison_share` of all samples, all in the largest group, shifted by `shift`
    along one random direction (a trigger's footprint). Built chunk by chunk into one preallocated float32 array.
    """
    rng = np.random.default_rng(seed)
    weights = np.arange(n_groups, 0, -1, dtype=np.float64)
    sizes = np.floor(n * weights / weights.sum()).astype(np.int64)
    sizes[0] += n - sizes.sum()
    features = np.empty((n, dim), dtype=np.float32)
    labels = np.zeros((n, 14), dtype=np.float32)
    rank = min(20, dim)
    start = 0
    for g, size in enumerate(sizes):
        basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].astype(np.float32)
        scale = (2.0 * np.linspace(1.0, 0.3, rank)).astype(np.float32)
        mean = rng.normal(size=dim).astype(np.float32)
        for lo in range(start, start + int(size), chunk):
            hi = min(lo + chunk, start + int(size))
            factors = rng.standard_normal((hi - lo, rank), dtype=np.float32) * scale
            features[lo:hi] = mean + factors @ basis.T + rng.standard_normal((hi - lo, dim), dtype=np.float32)
        labels[start : start + size, g % 14] = 1.0
        start += int(size)
    poison = rng.choice(int(sizes[0]), max(1, int(round(poison_share * n))), replace=False)
    direction = rng.normal(size=dim)
    features[poison] += (shift * direction / np.linalg.norm(direction)).astype(np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[poison] = True
    return Planted(features, labels, mask)


class FeatureClassifier:
    """The ART classifier surface the poison detectors touch, answering ``get_activations`` with its input: ART is
    handed the feature array itself as ``x_train`` and so analyses exactly the features ours do (no copy)."""

    def __init__(self, nb_classes: int) -> None:
        self.nb_classes = nb_classes
        self.layer_names = [LAYER]

    def get_activations(
        self, x: np.ndarray, layer: int | str = 0, batch_size: int = 128, framework: bool = False
    ) -> np.ndarray:
        """The features passed in."""
        return x


def _detectors(
    planted: Planted, device: str, eps: float, removal_share: float, seed: int
) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a call returning boolean flags (N,), ours from a fresh context over the cached features."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from sklearn.exceptions import ConvergenceWarning

    from artmed.defenses import ActivationClustering, EvaluationContext, SpectralSignatures, group_labels
    from artmed.defenses.spectre import SPECTRE

    feats, y = planted.features, planted.labels
    ids, names = group_labels(y)
    # ART's segment_by_class reads a one-column one-hot row with int(), which NumPy 2 refuses: one group goes as ids
    classes = np.eye(len(names), dtype=np.float32)[ids] if len(names) > 1 else ids

    def ours(defense: Any) -> Callable[[], np.ndarray]:
        return lambda: defense.run(EvaluationContext(y_train=y, feature_cache={LAYER: feats})).flags

    def art_ss() -> np.ndarray:
        defence = SpectralSignatureDefense(
            FeatureClassifier(len(names)),
            feats,
            classes,
            expected_pp_poison=eps,
            batch_size=128,
            eps_multiplier=removal_share,
        )
        return np.asarray(defence.detect_poison()[1]) == 0

    def art_ac(reduce: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            defence = ActivationDefence(FeatureClassifier(len(names)), feats, classes)
            state = np.random.get_state()
            np.random.seed(seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    _, is_clean = defence.detect_poison(
                        nb_clusters=2, nb_dims=10, reduce=reduce, cluster_analysis="smaller"
                    )
            finally:
                np.random.set_state(state)
            return np.asarray(is_clean) == 0

        return run

    ss_params: dict[str, Any] = {"eps": eps, "removal_share": removal_share, "device": device}
    return {
        "ss_art_mode": ours(SpectralSignatures(**ss_params, mode="art")),
        "ss_centered": ours(SpectralSignatures(**ss_params, mode="centered")),
        "spectre": ours(SPECTRE(**ss_params)),
        "art_ss": art_ss,
        "ac_art_mode": ours(ActivationClustering(mode="art", seed=seed, device=device)),
        "ac_artmed": ours(ActivationClustering(seed=seed, device=device)),
        "art_ac": art_ac("PCA"),
        "art_ac_ica": art_ac("FastICA"),
    }


COMPARISONS = (
    ("SS art-mode vs ART SS", "ss_art_mode", "art_ss", True),
    ("SS centered vs ART SS", "ss_centered", "art_ss", False),
    ("AC art-mode vs ART AC", "ac_art_mode", "art_ac", True),
    ("AC artmed vs ART AC", "ac_artmed", "art_ac", False),
    ("AC artmed vs ART AC (FastICA)", "ac_artmed", "art_ac_ica", False),
)
"""(row label, our run, ART's run, whether flags should agree: ours in ART-compatible mode). "ART AC" is ART's
ActivationDefence with PCA (its fastest setting, and what our art mode mirrors); "(FastICA)" is ART's default
reduction, the same one our artmed mode uses."""


def bench_detection(
    n: int, device: str, eps: float, removal_share: float, repeats: int, run_art: bool, n_groups: int = 4, seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One size: every detector `repeats` times, interleaved; rows per comparison and the raw runs by name.

    Seconds are the fastest repeat, peak memory the largest; flags come from the first repeat.
    """
    from artmed.evaluations.metrics import detection_metrics

    planted = synthetic_features(n, n_groups=n_groups, seed=seed)
    features_mb = planted.features.nbytes / 2**20
    runners = _detectors(planted, device, eps, removal_share, seed)
    if not run_art:
        runners = {k: v for k, v in runners.items() if not k.startswith("art_")}
    runs: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for name, fn in runners.items():
            flags, cost = _timed(fn)
            run = runs.setdefault(name, {"flags": flags, "costs": []})
            run["costs"].append(cost)
    for run in runs.values():
        run["seconds"] = min(c["seconds"] for c in run["costs"])
        run["seconds_median"] = float(np.median([c["seconds"] for c in run["costs"]]))
        run["peak_mb"] = max(c["peak_mb"] for c in run["costs"])
        cuda = [c["cuda_peak_mb"] for c in run["costs"] if c["cuda_peak_mb"] is not None]
        run["cuda_peak_mb"] = max(cuda) if cuda else None
        quality = detection_metrics(run["flags"], planted.poison_mask)
        run["f1"], run["tpr"] = quality["f1"], quality["tpr"]
        run["flagged"] = int(run["flags"].sum())
        run["us_per_sample"] = 1e6 * run["seconds"] / n
    rows = []
    for label, ours, art, comparable in COMPARISONS:
        a, b = runs[ours], runs.get(art)
        row = {
            "n": n,
            "comparison": label,
            "features_mb": features_mb,
            "ours_s": a["seconds"],
            "peak_mb_ours": a["peak_mb"],
            "f1_ours": a["f1"],
            "us_per_sample_ours": a["us_per_sample"],
            "flagged_ours": a["flagged"],
            "cuda_peak_mb_ours": a["cuda_peak_mb"],
        }
        if b is not None:
            row.update(
                art_s=b["seconds"],
                ratio=b["seconds"] / a["seconds"],
                peak_mb_art=b["peak_mb"],
                f1_art=b["f1"],
                us_per_sample_art=b["us_per_sample"],
                flagged_art=b["flagged"],
            )
            if comparable:
                row["agreement"] = float(np.mean(a["flags"] == b["flags"]))
                row["disagreements"] = int(np.sum(a["flags"] != b["flags"]))
        rows.append(row)
    for run in runs.values():
        del run["flags"]
    return rows, runs


def spectre_vs_ss(runs_by_size: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per size: SPECTRE's seconds against centred SS's from the same interleaved runs (time_ratio = SPECTRE / SS)
    and both detectors' F1 and TPR on the planted poison (SPECTRE flags round(1.5·eps·n) of a group as released, SS
    floor(1.5·eps·n): compare TPR)."""
    rows = []
    for n, runs in sorted(runs_by_size.items()):
        spectre, ss = runs["spectre"], runs["ss_centered"]
        rows.append(
            {
                "n": n,
                "spectre_s": spectre["seconds"],
                "ss_s": ss["seconds"],
                "time_ratio": spectre["seconds"] / ss["seconds"],
                "f1_spectre": spectre["f1"],
                "f1_ss": ss["f1"],
                "tpr_spectre": spectre["tpr"],
                "tpr_ss": ss["tpr"],
                "peak_mb_spectre": spectre["peak_mb"],
                "cuda_peak_mb_spectre": spectre["cuda_peak_mb"],
            }
        )
    return rows


def warm_up_detection(device: str, eps: float, removal_share: float, art: bool, seed: int = 0) -> None:
    """Run every detector (ART's too when `art`) once on a small input, untimed, so one-time costs (lazy imports,
    BLAS/LAPACK start-up, first CUDA kernels) fall on neither side of the first timed size."""
    runners = _detectors(synthetic_features(MIN_SIZE, seed=seed + 1), device, eps, removal_share, seed)
    for name, run in runners.items():
        if art or not name.startswith("art_"):
            run()


def memory_check(rows: list[dict[str, Any]], budget_mb: float = MEMORY_BUDGET_MB) -> dict[str, Any]:
    """At the largest size: each of our detectors' resident peak plus the cached features it reads, against
    `budget_mb` (the issue's 2 GB for 200k x 512)."""
    n = max(row["n"] for row in rows)
    ours = {
        row["comparison"].split(" vs ")[0]: row["features_mb"] + row["peak_mb_ours"] for row in rows if row["n"] == n
    }
    return {"n": n, "budget_mb": budget_mb, "total_mb": ours, "ok": all(v < budget_mb for v in ours.values())}


def scaling(runs_by_size: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per detector: microseconds per sample at each size, their spread (max / min), their growth (the largest
    ratio of a bigger size's to a smaller size's) and whether cost is at most linear in N (growth within
    `LINEAR_SPREAD`; fixed costs that make small sizes dearer per sample do not count against it)."""
    out: dict[str, dict[str, Any]] = {}
    names = sorted({name for runs in runs_by_size.values() for name in runs})
    for name in names:
        per = {n: runs[name]["us_per_sample"] for n, runs in sorted(runs_by_size.items()) if name in runs}
        values = list(per.values())
        spread = max(values) / min(values) if len(values) > 1 else None
        growth = (
            max(values[j] / values[i] for i in range(len(values)) for j in range(i + 1, len(values)))
            if len(values) > 1
            else None
        )
        out[name] = {
            "us_per_sample": per,
            "spread": spread,
            "growth": growth,
            "at_most_linear": None if growth is None else growth <= LINEAR_SPREAD,
        }
    return out
