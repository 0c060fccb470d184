"""Procedural chest radiograph phantoms: seeded, vectorised numpy images whose findings follow a CheXpert label vector.

A phantom is rendered as a density map in "patient" coordinates (u to the image right, v downwards, thorax
roughly in [-0.7, 0.7] x [-0.9, 0.6]) and exposed as 1 - exp(-k * density), then noise is added. Radiographic
convention: the patient's right is on the image left. Every random quantity is drawn from the seed in a fixed
layout that does not depend on the labels, so the same seed with and without a finding gives the same patient.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.progress import tqdm

F = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
"""Column of each CheXpert finding in a label vector."""

_ANATOMY = (
    "scale",
    "rot",
    "tx",
    "ty",
    "lw",
    "lh",
    "ctr",
    "hh",
    "mw",
    "dome_diff",
    "dome_h",
    "air",
    "body_w",
    "rib_sp",
    "rib_phase",
    "k",
    "gamma",
    "contrast",
    "bright",
    "noise",
    "vessel",
)
_PER_FINDING = 5  # severity, side, and three shape/position draws per finding
_N_UNIFORM = len(_ANATOMY) + NUM_LABELS * _PER_FINDING
_GRID = 14  # resolution of the smooth noise fields (vessels, patchiness, bronchograms)
_N_FIELDS = 3
_CHUNK_PIXELS = 1 << 18
_MEDIAL = 0.07  # medial lung border, distance from the midline (patient units)
_LUNG_W = 0.56  # lung width at the base (before the per-patient factor lw)


def _ramp(z: np.ndarray, inv_edge: float) -> np.ndarray:
    """Soft step in place: 0 for z << 0, 1 for z >> 0, linear over one edge width."""
    z *= inv_edge
    z += 0.5
    return np.clip(z, 0.0, 1.0, out=z)


def _bump(r2: np.ndarray) -> np.ndarray:
    """Smooth compact bump of a squared radius, in place: (1 - r2)^2 inside the unit disc, 0 outside."""
    np.subtract(1.0, r2, out=r2)
    np.clip(r2, 0.0, 1.0, out=r2)
    return np.square(r2, out=r2)


def _seg_dist(u: np.ndarray, v: np.ndarray, a: tuple, b: tuple) -> np.ndarray:
    """Distance from points (u, v) to the segment a-b (endpoints may be per-image (m,1,1) arrays)."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    inv = 1.0 / (dx * dx + dy * dy + 1e-12)
    pu, pv = u - ax, v - ay
    t = np.clip((pu * dx + pv * dy) * inv, 0.0, 1.0)
    pu -= t * dx
    pv -= t * dy
    return np.sqrt(pu * pu + pv * pv)


def _polyline_dist(u: np.ndarray, v: np.ndarray, points: list[tuple]) -> np.ndarray:
    """Distance from (u, v) to a polyline through `points`."""
    out = _seg_dist(u, v, points[0], points[1])
    for a, b in zip(points[1:-1], points[2:]):
        np.minimum(out, _seg_dist(u, v, a, b), out=out)
    return out


def _upsample_matrix(size: int) -> np.ndarray:
    """(size, _GRID) Gaussian interpolation weights with unit-norm rows: unit-variance smooth fields from a grid."""
    x = (np.arange(size) + 0.5) / size
    g = (np.arange(_GRID) + 0.5) / _GRID
    w = np.exp(-(((x[:, None] - g[None, :]) * _GRID / 0.8) ** 2))
    return (w / np.sqrt((w * w).sum(axis=1, keepdims=True))).astype(np.float32)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_labels(n: int, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """(n, 14) float32 CheXpert labels with realistic co-occurrence: ~55% No Finding, multi-label disease.

    No Finding excludes every disease (Support Devices may accompany it); pneumonia often comes with lung opacity
    or consolidation, edema with cardiomegaly and effusion; some positives are uncertain (-1).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = _rng(seed)
    y = np.zeros((n, NUM_LABELS), dtype=np.float32)
    normal = rng.random(n) < 0.55
    y[normal, F["No Finding"]] = 1.0
    base = {
        "Lung Opacity": 0.26,
        "Pleural Effusion": 0.22,
        "Atelectasis": 0.15,
        "Edema": 0.12,
        "Cardiomegaly": 0.13,
        "Consolidation": 0.07,
        "Pneumonia": 0.1,
        "Pneumothorax": 0.06,
        "Enlarged Cardiomediastinum": 0.06,
        "Lung Lesion": 0.07,
        "Fracture": 0.05,
        "Pleural Other": 0.04,
    }
    names = list(base)
    cols = np.array([F[k] for k in names])
    probs = np.array([base[k] for k in names])
    sick = ~normal
    draws = rng.random((n, len(names))) < probs
    empty = ~draws.any(axis=1)
    forced = rng.choice(len(names), size=n, p=probs / probs.sum())
    draws[np.arange(n), forced] |= empty
    dep = rng.random((n, 6))
    col = {k: j for j, k in enumerate(names)}
    draws[:, col["Lung Opacity"]] |= draws[:, col["Pneumonia"]] & (dep[:, 0] < 0.6)
    draws[:, col["Consolidation"]] |= draws[:, col["Pneumonia"]] & (dep[:, 1] < 0.35)
    draws[:, col["Cardiomegaly"]] |= draws[:, col["Edema"]] & (dep[:, 2] < 0.35)
    draws[:, col["Pleural Effusion"]] |= draws[:, col["Edema"]] & (dep[:, 3] < 0.45)
    draws[:, col["Enlarged Cardiomediastinum"]] |= draws[:, col["Cardiomegaly"]] & (dep[:, 4] < 0.3)
    draws[:, col["Lung Opacity"]] |= draws[:, col["Consolidation"]] & (dep[:, 5] < 0.5)
    draws &= sick[:, None]
    uncertain_p = np.array([0.25 if k in ("Pneumonia", "Atelectasis") else 0.1 for k in names])
    uncertain = rng.random((n, len(names))) < uncertain_p
    y[:, cols] = np.where(draws, np.where(uncertain, -1.0, 1.0), 0.0)
    devices = rng.random(n) < np.where(normal, 0.1, 0.35)
    y[devices, F["Support Devices"]] = 1.0
    return y


class PhantomGenerator:
    """Seeded generator of (N, 1, S, S) float32 chest radiograph phantoms in [0, 1] drawn from label vectors.

    `n_jobs` threads render chunks in parallel (None: up to 8, one per core); the output does not depend on it.
    `verbose` shows a progress bar.
    """

    def __init__(self, image_size: int = 128, seed: int = 0, n_jobs: int | None = None, verbose: bool = False) -> None:
        if int(image_size) != image_size or not 32 <= image_size <= 1024:
            raise ValueError(f"image_size must be an integer in [32, 1024], got {image_size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if n_jobs is not None and n_jobs < 1:
            raise ValueError(f"n_jobs must be >= 1 or None, got {n_jobs}")
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.n_jobs = n_jobs
        self.verbose = bool(verbose)

    def sample_labels(self, n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
        """Realistic (n, 14) labels (see the module function); seed None uses the generator's seed."""
        return sample_labels(n, self.seed if seed is None else seed)

    def sample(self, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`n` labelled phantoms: (images (n,1,S,S), labels (n,14)); seed None uses the generator's seed."""
        seed = self.seed if seed is None else int(seed)
        labels = sample_labels(n, np.random.default_rng([seed, 3]))
        return self.generate(labels, seed), labels

    def generate(
        self, labels: np.ndarray, seed: int | None = None, peripheral_opacity: np.ndarray | None = None
    ) -> np.ndarray:
        """Phantoms for each label row, deterministic in `seed` (None: the generator's seed).

        Image i depends only on (seed, i, labels[i]): a longer label array extends, never changes, a shorter one.
        `peripheral_opacity` (bool per image) draws Lung Opacity as bilateral, peripheral, lower-zone
        ground-glass opacities (the COVID-19 pneumonia pattern) instead of one focal hazy opacity.
        """
        labels = _check_labels(labels)
        seed = self.seed if seed is None else int(seed)
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        n, size = labels.shape[0], self.image_size
        params = _draw_params(labels, seed)
        if peripheral_opacity is not None:
            flags = np.asarray(peripheral_opacity)
            if flags.shape != (n,) or flags.dtype != bool:
                raise ValueError(
                    f"peripheral_opacity must be a bool array of shape ({n},), got {flags.dtype} {flags.shape}"
                )
            params["peripheral"] = flags
        else:
            params["peripheral"] = np.zeros(n, dtype=bool)
        fields = np.random.default_rng([seed, 1]).standard_normal((n, _N_FIELDS, _GRID, _GRID), dtype=np.float32)
        out = np.empty((n, 1, size, size), dtype=np.float32)
        chunk = max(1, _CHUNK_PIXELS // (size * size))
        up = _upsample_matrix(size)
        starts = range(0, n, chunk)

        def work(k: int) -> int:
            a = starts[k]
            b = min(a + chunk, n)
            pix_rng = np.random.default_rng([seed, 2, k])
            out[a:b, 0] = _Renderer(params, a, b, size, fields[a:b], up, pix_rng).render()
            return k

        jobs = self.n_jobs or min(os.cpu_count() or 1, 8)
        bar = tqdm(total=n, desc="phantoms", unit="img", leave=False, disable=not self.verbose)
        with threadpool_limits(limits=1, user_api="blas"), bar:  # tiny GEMMs: BLAS threads only spin and contend
            if jobs == 1 or len(starts) == 1:
                for k in range(len(starts)):
                    work(k)
                    bar.update(min(chunk, n - starts[k]))
            else:
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    for k in pool.map(work, range(len(starts))):
                        bar.update(min(chunk, n - starts[k]))
        return out

    def landmarks(self, labels: np.ndarray, seed: int | None = None) -> dict[str, np.ndarray]:
        """Ground-truth geometry of the phantoms `generate(labels, seed)` draws, in pixel coordinates (x, y).

        Points are (n, 2) arrays, per-lung points (n, 2, 2) with side 0 = image left (the patient's right):
        "heart_center", "heart_level" (where the heart's width shows between the lungs), "upper_mediastinum",
        "nodule_center", "fracture_point", "lung_center", "lung_lateral", "lung_medial", "lung_base",
        "costophrenic_angle"; sizes: "ctr" (cardiothoracic ratio),
        "heart_width_px", "thorax_width_px", "nodule_radius_px"; and "<finding>_side" for every finding
        (0 or 1; for Pleural Effusion 2 means both sides). Absent findings still get where they would be drawn.
        """
        labels = _check_labels(labels)
        p = _draw_params(labels, self.seed if seed is None else int(seed))
        to_px = _PixelMap(p, self.image_size)
        px = p["scale"] * self.image_size / 2

        def lung(q: float, t: float) -> np.ndarray:
            pts = []
            for k, sgn in enumerate((-1.0, 1.0)):
                wt = _half_width(p["lw"], t)
                pts.append(to_px(sgn * (_MEDIAL + wt * (1.0 + q)), p["ytop"] + t * p["H"][:, k]))
            return np.stack(pts, 1)

        out = {
            "ctr": p["ctr"].copy(),
            "heart_center": to_px(p["hx"], p["hy"]),
            "heart_level": to_px(p["hx"] - 0.15 * p["hh"], p["hy"] - 0.45 * p["hh"]),
            "heart_width_px": 2 * p["hw"] * px,
            "thorax_width_px": 2 * p["tw"] * px,
            "upper_mediastinum": to_px(np.full_like(p["lh"], 0.01), -0.4 * p["lh"]),
            "nodule_center": to_px(p["nod_u"], p["nod_v"]),
            "nodule_radius_px": p["nod_r"] * px,
            "fracture_point": to_px(p["frac_u"], p["frac_v"]),
            "lung_center": lung(0.0, 0.5),
            "lung_lateral": lung(0.8, 0.5),
            "lung_medial": lung(-0.6, 0.5),
            "lung_base": lung(0.1, 0.85),
            "costophrenic_angle": lung(0.75, 0.97),
        }
        for name in CHEXPERT_LABELS[1:]:
            out[f"{name}_side"] = p["side"][:, F[name]].copy()
        u = p["side_u"][:, F["Pleural Effusion"]]
        out["Pleural Effusion_side"] = np.where(u < 0.35, 2, (u >= 0.675).astype(np.int64))
        return out


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels, dtype=np.float32)
    if arr.ndim == 1 and arr.shape[0] == NUM_LABELS:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise ValueError(f"labels must have shape (N, {NUM_LABELS}), got {arr.shape}")
    if not np.isin(arr, (1.0, 0.0, -1.0)).all():
        raise ValueError("labels must contain only 1, 0 or -1")
    return arr


def _half_width(lw: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Half-width of a lung at relative height t (0 apex, 1 base): narrow rounded apex, widest at the base."""
    return 0.5 * _LUNG_W * lw * (0.45 + 0.55 * np.sqrt(np.clip(t, 0.0, 1.0)))


def _rib_curve(d: np.ndarray) -> np.ndarray:
    """Vertical course of a posterior rib at distance d from the midline (shared by all ribs)."""
    return 0.9 * d * d - 0.35 * d


def _draw_params(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per-image anatomy and finding parameters (float32 arrays); the random draws never depend on the labels."""
    n = labels.shape[0]
    u = np.random.default_rng([seed, 0]).random((n, _N_UNIFORM))
    a = {name: u[:, j] for j, name in enumerate(_ANATOMY)}
    fu = u[:, len(_ANATOMY) :].reshape(n, NUM_LABELS, _PER_FINDING)
    sev = np.where(labels != 0, 0.55 + 0.45 * fu[:, :, 0], 0.0) * np.where(labels < 0, 0.5, 1.0)
    p: dict[str, np.ndarray] = {
        "sev": sev,
        "side": (fu[:, :, 1] >= 0.5).astype(np.int64),
        "fa": fu[:, :, 2],
        "fb": fu[:, :, 3],
        "fc": fu[:, :, 4],
        "side_u": fu[:, :, 1],
        "scale": 1.0 + 0.1 * a["scale"],
        "rot": np.deg2rad(-5.0 + 10.0 * a["rot"]),
        "tx": -0.05 + 0.1 * a["tx"],
        "ty": -0.02 + 0.06 * a["ty"],
        "lw": 0.92 + 0.14 * a["lw"],
        "lh": 0.92 + 0.12 * a["lh"],
        "dome_h": 0.07 + 0.06 * a["dome_h"],
        "air": 0.28 + 0.05 * a["air"],
        "body_w": 0.8 + 0.12 * a["body_w"],
        "rib_sp": 0.15 + 0.03 * a["rib_sp"],
        "rib_phase": a["rib_phase"],
        "k": 2.2 + 0.5 * a["k"],
        "gamma": 0.85 + 0.3 * a["gamma"],
        "contrast": 0.92 + 0.14 * a["contrast"],
        "bright": -0.04 + 0.08 * a["bright"],
        "noise": 0.006 + 0.018 * a["noise"],
        "vessel": 0.05 + 0.03 * a["vessel"],
    }
    lw, lh = p["lw"], p["lh"]
    p["tw"] = _MEDIAL + _LUNG_W * lw
    p["ytop"] = -0.75 * lh
    atel = sev[:, F["Atelectasis"]]
    p["diaphragm"] = 0.45 * lh  # the left dome before any volume loss: heart, abdomen and devices rest on it
    ybase = np.repeat(p["diaphragm"][:, None], 2, axis=1)
    ybase[:, 0] -= 0.02 + 0.05 * a["dome_diff"]  # the right hemidiaphragm sits higher
    ybase[np.arange(n), p["side"][:, F["Atelectasis"]]] -= 0.07 * atel  # volume loss lifts the diaphragm
    p["ybase"] = ybase
    p["H"] = ybase - p["ytop"][:, None]
    cm = sev[:, F["Cardiomegaly"]]
    p["ctr"] = np.where(cm > 0, 0.52 + 0.14 * cm, 0.4 + 0.08 * a["ctr"])
    p["hw"] = p["ctr"] * p["tw"]
    p["hx"] = p["hw"] / 3.0
    p["hh"] = (0.22 + 0.04 * a["hh"]) * lh * (1.0 + 0.15 * cm)
    p["hy"] = p["diaphragm"] - 0.3 * p["hh"]
    ecm = sev[:, F["Enlarged Cardiomediastinum"]]
    p["mw"] = (0.08 + 0.03 * a["mw"]) * lw * np.where(ecm > 0, 1.5 + 0.6 * ecm, 1.0)
    sgn = np.array([-1.0, 1.0])
    rows = np.arange(n)
    # Lung lesion: a round nodule inside one lung.
    side_n = p["side"][:, F["Lung Lesion"]]
    t0 = 0.25 + 0.5 * p["fa"][:, F["Lung Lesion"]]
    q0 = -0.3 + 0.8 * p["fb"][:, F["Lung Lesion"]]
    p["nod_v"] = p["ytop"] + t0 * p["H"][rows, side_n]
    p["nod_u"] = sgn[side_n] * (_MEDIAL + _half_width(lw, t0) * (1.0 + q0))
    p["nod_r"] = (0.05 + 0.04 * p["fc"][:, F["Lung Lesion"]]) * (0.7 + 0.3 * sev[:, F["Lung Lesion"]])
    # Fracture: a break in one posterior rib, placed on the rib's centre line.
    side_f = p["side"][:, F["Fracture"]]
    d = (0.3 + 0.25 * p["fa"][:, F["Fracture"]]) * lw
    k_rib = np.floor(-2.0 + 4.0 * p["fb"][:, F["Fracture"]])
    p["frac_u"] = sgn[side_f] * d
    p["frac_k"] = k_rib
    p["frac_v"] = _rib_curve(d) + (k_rib - p["rib_phase"]) * p["rib_sp"]
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in p.items()}


class _PixelMap:
    """Maps patient coordinates to pixel (x, y) of each image (inverse of the render transform)."""

    def __init__(self, p: dict[str, np.ndarray], size: int) -> None:
        self.p, self.size = p, size

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        p = self.p
        c, s = np.cos(p["rot"]), np.sin(p["rot"])
        x = p["scale"] * (c * u - s * v) + p["tx"]
        y = p["scale"] * (s * u + c * v) + p["ty"]
        return np.stack([(x + 1) * self.size / 2 - 0.5, (y + 1) * self.size / 2 - 0.5], axis=-1)


class _Renderer:
    """Renders images a..b of a parameter set: anatomy, then the signs of the findings, then exposure and noise."""

    def __init__(
        self,
        p: dict[str, np.ndarray],
        a: int,
        b: int,
        size: int,
        fields: np.ndarray,
        up: np.ndarray,
        pix_rng: np.random.Generator,
    ) -> None:
        self.p = {k: v[a:b] for k, v in p.items()}
        self.n, self.size = b - a, size
        self.ie = 1.0 / max(0.02, 2.5 / size)  # soft edges: about one pixel, never sharper than anatomy
        self.coarse, self.up = fields, up
        self.pix_rng = pix_rng

    def field(self, j: int, sub: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Smooth unit-variance noise field j (S x S) of the images `sub`: up @ grid @ up.T, image by image so
        the bytes never depend on which other images share the batch."""
        grid = self.coarse[sub, j]
        out = np.empty((grid.shape[0], self.size, self.size), dtype=np.float32)
        for i in range(grid.shape[0]):
            np.matmul(self.up @ grid[i], self.up.T, out=out[i])
        return out

    def col(self, key: str, j: int | None = None) -> np.ndarray:
        v = self.p[key] if j is None else self.p[key][:, j]
        return v[:, None, None]

    def fcol(self, key: str, name: str, sub: np.ndarray) -> np.ndarray:
        return self.p[key][sub, F[name]][:, None, None]

    def ramp(self, z: np.ndarray) -> np.ndarray:
        return _ramp(z, self.ie)

    def render(self) -> np.ndarray:
        self.coordinates()
        self.anatomy()
        self.findings()
        return self.expose()

    def coordinates(self) -> None:
        size = self.size
        g = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        c, s = np.cos(self.col("rot")), np.sin(self.col("rot"))
        inv = 1.0 / self.col("scale")
        dx = g[None, None, :] - self.col("tx")
        dy = g[None, :, None] - self.col("ty")
        self.U = (c * inv) * dx + (s * inv) * dy
        self.V = (c * inv) * dy - (s * inv) * dx
        self.absU = np.abs(self.U)

    def lungs(self) -> None:
        """Per side: lateral coordinate q (-1 medial, 0 centre, 1 lateral wall), height t, half-width, distance."""
        U, V = self.U, self.V
        shape = (2, *U.shape)
        self.Q, self.T, self.WT, self.SD = (np.empty(shape, dtype=np.float32) for _ in range(4))
        ytop, lw = self.col("ytop"), self.col("lw")
        for k, sgn in enumerate((-1.0, 1.0)):
            t, wt, q, sd = self.T[k], self.WT[k], self.Q[k], self.SD[k]
            np.multiply(V - ytop, 1.0 / self.col("H", k), out=t)
            np.clip(t, 0.0, 1.0, out=wt)
            np.sqrt(wt, out=wt)
            wt *= (0.5 * 0.55 * _LUNG_W) * lw
            wt += (0.5 * 0.45 * _LUNG_W) * lw
            np.multiply(U, sgn, out=q)
            q -= _MEDIAL
            q /= wt
            q -= 1.0
            dome = (q + 0.15) * (1.0 / 1.15)
            np.square(dome, out=dome)
            np.subtract(1.0, dome, out=dome)
            np.clip(dome, 0.0, 1.0, out=dome)
            dome *= -self.col("dome_h")
            dome += self.col("ybase", k)
            dome -= V
            np.abs(q, out=sd)
            np.subtract(1.0, sd, out=sd)
            sd *= wt
            np.minimum(sd, dome, out=sd)
            apex = np.square(q)
            apex *= -0.1
            apex += V
            apex -= ytop
            np.minimum(sd, apex, out=sd)
        self.L = self.ramp(self.SD.copy())
        self.lung_any = self.L[0] + self.L[1]

    def anatomy(self) -> None:
        U, V, absU, ramp = self.U, self.V, self.absU, self.ramp
        bw = np.sqrt(np.clip((V + 1.05) * (1.0 / 0.3), 0.0, 1.0))
        bw *= self.col("body_w") - 0.2
        bw += 0.2
        bw -= absU
        self.body = ramp(bw)
        self.lungs()
        abdomen = np.clip((V - self.col("diaphragm") + 0.15) * (1.0 / 0.3), 0.0, 1.0)
        A = abdomen * (1.0 - self.lung_any)
        A *= 0.2
        A += 0.4
        A *= self.body
        hw, hh = self.col("hw"), self.col("hh")
        dv = V - self.col("hy")
        r2 = np.square((U - self.col("hx") - 0.3 * dv) * (1.0 / hw))  # sheared: the apex points down and left
        r2 += np.square(dv * (1.0 / hh))
        np.subtract(1.0, r2, out=r2)
        r2 *= 0.5 * np.minimum(hw, hh)
        self.heart = ramp(r2)
        solid = ramp(self.col("mw") - np.abs(U - 0.01)) * ramp(self.col("hy") - V)
        solid *= np.clip((V - self.col("ytop") + 0.3) * (1.0 / 0.3), 0.0, 1.0)
        np.maximum(solid, self.heart, out=solid)
        self.airness = self.lung_any * (1.0 - solid)
        solid += 0.15 * self.heart
        np.subtract(1.0, abdomen, out=abdomen)
        solid *= abdomen
        solid *= 0.22
        A += solid
        # Trachea: an air column above the carina.
        A -= 0.2 * ramp(0.035 - np.abs(U - 0.01)) * ramp(-0.2 * self.col("lh") - V) * self.body
        # Hila: vessels at the lung roots.
        for sgn in (-1.0, 1.0):
            r2 = np.square((U - sgn * 0.19 * self.col("lw")) * (1.0 / 0.08))
            r2 += np.square((V + 0.05) * (1.0 / 0.11))
            A += 0.08 * _bump(r2)
        # Spine: vertebral bodies along the midline.
        vert = np.abs((V * (1.0 / 0.13)) % 1.0 - 0.5)
        vert *= 0.5
        vert += 0.75
        A += 0.08 * ramp(0.07 - absU) * vert
        self.A = A
        self.ribs()
        # Clavicles: S-shaped bands from the manubrium to the shoulders.
        d = absU - 0.07
        yc = (0.2 * d - 0.2) * d
        yc += V + 0.72 * self.col("lh")
        clav = ramp(0.03 - np.abs(yc)) * ramp(0.64 * self.col("lw") - absU) * ramp(d)
        A += 0.14 * clav * self.body
        # Gastric air bubble under the left hemidiaphragm (image right).
        r2 = np.square((U - 0.3 * self.col("lw")) * (1.0 / 0.08))
        r2 += np.square((V - self.col("diaphragm") - 0.08) * (1.0 / 0.045))
        A -= 0.15 * _bump(r2) * self.body

    def ribs(self) -> None:
        V, ramp, sp, absU = self.V, self.ramp, self.col("rib_sp"), self.absU
        vr = (V - _rib_curve(absU)) * (1.0 / sp)
        vr += self.col("rib_phase")
        sev_f = self.p["sev"][:, F["Fracture"]]
        sub = np.flatnonzero(sev_f > 0)
        if sub.size:  # the lateral fragment steps down, a gap separates the fragments, callus forms around it
            U = self.U[sub]
            su = np.where(self.p["side"][sub, F["Fracture"]] == 0, -1.0, 1.0)[:, None, None].astype(np.float32)
            fu = self.p["frac_u"][sub][:, None, None]
            k = self.p["frac_k"][sub][:, None, None]
            on_rib = np.abs(vr[sub] - k) < 0.5
            beyond = (U - fu) * su
            step = np.clip(1.0 - np.abs(beyond - 0.06) * (1.0 / 0.1), 0.0, 1.0) * (beyond > 0)
            sev = sev_f[sub][:, None, None]
            vr[sub] -= (0.45 * sev) * step * on_rib
            gap = ramp((0.035 + 0.025 * sev) - np.abs(U - fu)) * on_rib
        dist = np.abs(vr - np.round(vr))
        rib = ramp((0.13 - dist) * sp)
        if sub.size:
            rib[sub] *= 1.0 - gap
            r2 = np.square(U - fu) + np.square(self.V[sub] - self.p["frac_v"][sub][:, None, None])
            r2 *= 1.0 / 0.06**2
            self.A[sub] += (0.2 * sev) * _bump(r2)
        cage = ramp(self.col("tw") + 0.05 - absU) * ramp(V - self.col("ytop") + 0.08)
        cage *= ramp(self.col("diaphragm") + 0.04 - V)
        cage *= ramp(absU - 0.08)
        self.A += 0.07 * rib * cage

    def side_arrays(self, sub: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, ...]:
        """q, t, wt, sd and lung mask of the chosen side for the images `sub`."""
        return self.Q[side, sub], self.T[side, sub], self.WT[side, sub], self.SD[side, sub], self.L[side, sub]

    def findings(self) -> None:
        """Pleural air first (it removes vessel markings), then vessels, then every additive sign."""
        sev = self.p["sev"]
        self.no_vessels = np.zeros_like(self.A)
        for name, draw in (
            ("Pneumothorax", self.pneumothorax),
            (None, self.vessels),
            ("Pleural Effusion", self.effusion),
            ("Consolidation", self.consolidation),
            ("Pneumonia", self.pneumonia),
            ("Lung Opacity", self.opacity),
            ("Edema", self.edema),
            ("Atelectasis", self.atelectasis),
            ("Lung Lesion", self.lesion),
            ("Pleural Other", self.pleural_other),
            ("Support Devices", self.devices),
        ):
            sub = np.arange(self.n) if name is None else np.flatnonzero(sev[:, F[name]] > 0)
            if sub.size:
                draw(sub)

    def vessels(self, _: np.ndarray) -> None:
        """Branching vascular markings (contour lines of a smooth field) fading outwards; then the lung air."""
        ves = np.abs(self.field(0))
        ves *= -1.0 / 0.3
        ves += 1.0
        np.clip(ves, 0.0, 1.0, out=ves)
        fade = self.absU * (0.6 / self.col("tw"))
        np.subtract(1.15, fade, out=fade)
        ves *= fade
        ves *= self.airness
        ves *= 1.0 - self.no_vessels
        ves *= self.col("vessel") * (1.0 + self.col("sev", F["Edema"]))
        self.A += ves
        self.A -= self.col("air") * self.airness

    def pneumothorax(self, sub: np.ndarray) -> None:
        """Pleural air between the chest wall and the collapsed lung: dark, no markings, a thin visceral line."""
        side = self.p["side"][sub, F["Pneumothorax"]]
        q, t, wt, sd, lung = self.side_arrays(sub, side)
        depth = 0.2 + 0.35 * self.fcol("sev", "Pneumothorax", sub)
        H = self.p["H"][sub, side][:, None, None]
        inner = np.minimum((1.0 - depth - q) * wt, (t - 0.3 * depth) * H)
        ptx = lung * self.ramp(-inner)
        line = lung * self.ramp(0.012 - np.abs(inner))
        self.no_vessels[sub] = ptx
        self.A[sub] += 0.1 * line - 0.08 * ptx

    def effusion(self, sub: np.ndarray) -> None:
        """Dependent fluid: basal opacity with a meniscus rising laterally and a blunted costophrenic angle."""
        u = self.p["side_u"][sub, F["Pleural Effusion"]]
        sev = self.fcol("sev", "Pleural Effusion", sub)
        for k in (0, 1):
            on = np.flatnonzero((u < 0.35) | ((u >= 0.675) == bool(k)))
            if not on.size:
                continue
            s, side = sub[on], np.full(on.size, k)
            q, t, wt, sd, lung = self.side_arrays(s, side)
            sv = sev[on]
            level = 1.0 - (0.08 + 0.16 * sv) * (0.8 + 0.4 * self.fcol("fa", "Pleural Effusion", s))
            meniscus = np.square(np.clip(q + 0.2, 0.0, None)) * (0.14 * sv)
            fluid = self.ramp((t - level + meniscus) * self.p["H"][s, k][:, None, None])
            fluid *= lung * (1.0 - self.heart[s])
            self.A[s] += (0.32 + 0.06 * sv) * fluid

    def _lobar(self, sub: np.ndarray, name: str) -> np.ndarray:
        """A lobe-shaped region (upper or lower, bounded by an oblique fissure) of one lung."""
        side = self.p["side"][sub, F[name]]
        q, t, wt, sd, lung = self.side_arrays(sub, side)
        lower = self.fcol("fa", name, sub) < 0.65
        cut = 0.45 + 0.2 * self.fcol("fb", name, sub)
        fissure = (t + 0.25 * q - cut) * self.p["H"][sub, side][:, None, None]
        region = self.ramp(np.where(lower, fissure, -fissure - 0.1))
        return region * lung * (1.0 - self.heart[sub])

    def consolidation(self, sub: np.ndarray) -> None:
        """Dense, patchy lobar airspace opacity with a sharp fissural border."""
        patch = np.clip(0.75 + 0.3 * self.field(1, sub), 0.35, 1.0)
        self.A[sub] += (0.36 * self.fcol("sev", "Consolidation", sub)) * self._lobar(sub, "Consolidation") * patch

    def pneumonia(self, sub: np.ndarray) -> None:
        """Lobar pneumonia: patchy consolidation crossed by darker air-filled bronchi (air bronchograms)."""
        patch = np.clip(0.7 + 0.35 * self.field(1, sub), 0.3, 1.0)
        bronch = np.clip(1.0 - np.abs(self.field(2, sub)) * (1.0 / 0.25), 0.0, 1.0)
        patch *= 1.0 - 0.75 * bronch
        self.A[sub] += (0.34 * self.fcol("sev", "Pneumonia", sub)) * self._lobar(sub, "Pneumonia") * patch

    def opacity(self, sub: np.ndarray) -> None:
        """Ill-defined hazy opacity: a broad soft blob in one lung (or the bilateral peripheral pattern)."""
        peripheral = self.p["peripheral"][sub]
        if peripheral.any():
            self.peripheral_opacity(sub[peripheral])
            sub = sub[~peripheral]
            if not sub.size:
                return
        side = self.p["side"][sub, F["Lung Opacity"]]
        q, t, wt, sd, lung = self.side_arrays(sub, side)
        t0 = 0.35 + 0.45 * self.fcol("fa", "Lung Opacity", sub)
        q0 = -0.2 + 0.6 * self.fcol("fb", "Lung Opacity", sub)
        r = 0.5 + 0.3 * self.fcol("fc", "Lung Opacity", sub)
        r2 = np.square((q - q0) * (1.0 / r)) + np.square((t - t0) * (1.0 / (0.6 * r)))
        self.A[sub] += (0.25 * self.fcol("sev", "Lung Opacity", sub)) * _bump(r2) * lung * (1.0 - self.heart[sub])

    def peripheral_opacity(self, sub: np.ndarray) -> None:
        """Bilateral, peripheral, lower-zone predominant patchy ground-glass opacities (COVID-19 pattern)."""
        sev = self.fcol("sev", "Lung Opacity", sub)
        patch = np.clip(0.6 + 0.5 * self.field(1, sub), 0.0, 1.0)
        haze = np.zeros_like(patch)
        for k in (0, 1):
            rim = self.ramp((self.Q[k, sub] - 0.2) * self.WT[k, sub]) * np.clip(self.T[k, sub] * 1.6 - 0.3, 0.0, 1.0)
            haze += rim * self.L[k, sub]
        self.A[sub] += (0.28 * sev) * haze * patch * (1.0 - self.heart[sub])

    def edema(self, sub: np.ndarray) -> None:
        """Bilateral perihilar (bat-wing) haze plus a faint diffuse veil (vessels are accentuated too)."""
        U, V = self.U[sub], self.V[sub]
        lw = self.p["lw"][sub][:, None, None]
        haze = np.zeros_like(U)
        for sgn in (-1.0, 1.0):
            r2 = np.square((U - sgn * 0.22 * lw) * (1.0 / 0.3)) + np.square((V + 0.02) * (1.0 / 0.42))
            haze += _bump(r2)
        sev = self.fcol("sev", "Edema", sub)
        self.A[sub] += sev * (0.22 * haze + 0.04) * self.airness[sub]

    def atelectasis(self, sub: np.ndarray) -> None:
        """Plate-like (linear) atelectasis: a thin dense band in the lung base (the hemidiaphragm is raised)."""
        side = self.p["side"][sub, F["Atelectasis"]]
        q, t, wt, sd, lung = self.side_arrays(sub, side)
        t0 = 0.72 + 0.1 * self.fcol("fa", "Atelectasis", sub)
        slope = -0.15 + 0.3 * self.fcol("fb", "Atelectasis", sub)
        H = self.p["H"][sub, side][:, None, None]
        sev = self.fcol("sev", "Atelectasis", sub)
        band = self.ramp((0.022 + 0.02 * sev) - np.abs((t - t0 - slope * q) * H))
        band *= self.ramp((0.75 - np.abs(q - 0.1)) * wt)
        self.A[sub] += (0.3 * sev) * band * lung

    def lesion(self, sub: np.ndarray) -> None:
        """A well-circumscribed round nodule."""
        du = self.U[sub] - self.p["nod_u"][sub][:, None, None]
        dv = self.V[sub] - self.p["nod_v"][sub][:, None, None]
        dist = np.sqrt(du * du + dv * dv)
        disc = self.ramp(self.p["nod_r"][sub][:, None, None] - dist)
        self.A[sub] += (0.15 + 0.12 * self.fcol("sev", "Lung Lesion", sub)) * disc

    def pleural_other(self, sub: np.ndarray) -> None:
        """Pleural thickening: a dense rind along the lateral chest wall and apex of one lung."""
        side = self.p["side"][sub, F["Pleural Other"]]
        q, t, wt, sd, lung = self.side_arrays(sub, side)
        sev = self.fcol("sev", "Pleural Other", sub)
        wall = np.minimum((1.0 - q) * wt, self.V[sub] - self.p["ytop"][sub][:, None, None])  # lateral wall, apex
        rind = lung * self.ramp((0.035 + 0.04 * sev) - wall) * self.ramp((0.85 - t) * 2.0)
        self.A[sub] += (0.25 * sev + 0.1) * rind

    def devices(self, sub: np.ndarray) -> None:
        """Radiopaque lines: endotracheal + nasogastric tube, a right jugular central line, or a pacemaker."""
        kind = np.floor(self.p["fa"][sub, F["Support Devices"]] * 3).astype(int)[:, None, None]
        lw = self.p["lw"][sub][:, None, None]
        lh = self.p["lh"][sub][:, None, None]
        U, V = self.U[sub], self.V[sub]
        ybase = self.p["diaphragm"][sub][:, None, None]
        ett = _polyline_dist(U, V, [(0.01, -1.3), (0.01, -0.4 * lh)])
        ng = _polyline_dist(U, V, [(0.04, -1.3), (0.04, 0.1), (0.25 * lw, ybase + 0.1)])
        cvc = _polyline_dist(U, V, [(-0.3 * lw, -1.3), (-0.13 * lw, -0.72 * lh), (-0.07, -0.12 * lh)])
        lead = _polyline_dist(U, V, [(0.48 * lw, -0.6 * lh), (0.06, -0.35 * lh), (0.0, 0.0), (0.15 * lw, 0.25 * lh)])
        dist = np.where(kind == 0, np.minimum(ett, ng), np.where(kind == 1, cvc, lead))
        wire = self.ramp(0.018 - dist)
        box = self.ramp(0.07 - np.abs(U - 0.5 * lw)) * self.ramp(0.045 - np.abs(V + 0.6 * lh))
        np.maximum(wire, box * (kind == 2), out=wire)
        self.A[sub] += 0.6 * wire

    def expose(self) -> np.ndarray:
        """Density to brightness: 1 - exp(-k * density), gamma, contrast/brightness, quantum noise, clip to [0, 1]."""
        img = np.maximum(self.A, 0.0)
        img *= -self.col("k")
        np.exp(img, out=img)
        np.subtract(1.0, img, out=img)
        np.power(img, self.col("gamma"), out=img)
        img *= self.col("contrast")
        img += self.col("bright")
        noise = self.pix_rng.standard_normal(img.shape, dtype=np.float32)
        noise *= self.col("noise")
        img += noise
        return np.clip(img, 0.0, 1.0, out=img)


def __getattr__(name: str) -> object:
    """``save_phantom_grid``, which lives in ``artmed.data.phantom_plot``, imported on first use (no import cycle)."""
    if name == "save_phantom_grid":
        from artmed.data.phantom_plot import save_phantom_grid

        return save_phantom_grid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
