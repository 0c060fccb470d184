"""Phantom chest radiographs: determinism, label co-occurrence, and one visible sign per finding."""

import numpy as np
import pytest

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.phantom import PhantomGenerator, sample_labels, save_phantom_grid

SIZE = 64
SEEDS = (0, 1, 2, 3)


def one_hot(*names: str, value: float = 1.0) -> np.ndarray:
    y = np.zeros((1, NUM_LABELS), dtype=np.float32)
    for name in names:
        y[0, CHEXPERT_LABELS.index(name)] = value
    return y


def pair(name: str, seed: int, value: float = 1.0, size: int = SIZE):
    """The same patient without and with `name`: (clean image, diseased image, landmarks)."""
    gen = PhantomGenerator(size)
    with_f = one_hot(name, value=value)
    clean = gen.generate(one_hot(), seed)[0, 0]
    sick = gen.generate(with_f, seed)[0, 0]
    return clean, sick, gen.landmarks(with_f, seed)


def window(img: np.ndarray, xy: np.ndarray, r: int = 2) -> float:
    """Mean of img in a (2r+1)^2 window around pixel (x, y)."""
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    return float(img[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].mean())


def bright_run(img: np.ndarray, xy: np.ndarray, threshold: float) -> int:
    """Width of the contiguous run of pixels above `threshold` in the row of (x, y), through x (3-row mean)."""
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    row = img[y - 1 : y + 2].mean(axis=0)
    left = right = x
    while left > 0 and row[left - 1] > threshold:
        left -= 1
    while right < row.size - 1 and row[right + 1] > threshold:
        right += 1
    return right - left + 1


def test_shape_range_and_determinism():
    gen = PhantomGenerator(SIZE, seed=3)
    y = sample_labels(12, seed=1)
    a = gen.generate(y)
    assert a.shape == (12, 1, SIZE, SIZE) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0.1
    assert a.tobytes() == gen.generate(y).tobytes()
    assert a.tobytes() == PhantomGenerator(SIZE, seed=0).generate(y, seed=3).tobytes()
    assert not np.array_equal(a, gen.generate(y, seed=4))
    assert a.tobytes() == PhantomGenerator(SIZE, seed=3, n_jobs=1).generate(y).tobytes()
    # image i depends only on (seed, i, labels[i]): a shorter batch is a prefix of a longer one
    np.testing.assert_array_equal(gen.generate(y[:3]), a[:3])
    single = PhantomGenerator(SIZE, seed=3).generate(np.repeat(y[:1], 5, axis=0))
    assert single[0].tobytes() == a[0].tobytes()
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("size", [32, 224])
def test_other_sizes(size):
    x = PhantomGenerator(size).generate(sample_labels(2, 0))
    assert x.shape == (2, 1, size, size) and 0.0 <= x.min() and x.max() <= 1.0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        PhantomGenerator(SIZE).generate(np.zeros((3, 13)))
    with pytest.raises(ValueError, match="1, 0 or -1"):
        PhantomGenerator(SIZE).generate(np.full((1, 14), 2.0))
    with pytest.raises(ValueError, match="image_size"):
        PhantomGenerator(8)


def test_sample_labels_co_occurrence():
    y = sample_labels(6000, seed=0)
    assert y.shape == (6000, NUM_LABELS) and y.dtype == np.float32
    assert set(np.unique(y)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_array_equal(y, sample_labels(6000, seed=0))
    assert not np.array_equal(y, sample_labels(6000, seed=1))
    nf = y[:, 0] == 1
    assert 0.5 <= nf.mean() <= 0.6
    disease = y[:, 1:13]
    assert not disease[nf].any(), "No Finding must exclude every disease"
    assert (disease[~nf] != 0).any(axis=1).all(), "every abnormal study has a finding"
    assert y[nf, 13].any() and (y[nf, 13] == 1).mean() < (y[~nf, 13] == 1).mean()
    assert ((disease[~nf] != 0).sum(axis=1) >= 2).mean() > 0.25, "multi-label disease is common"
    col = CHEXPERT_LABELS.index
    pneu = y[:, col("Pneumonia")] != 0
    airspace = (y[:, col("Lung Opacity")] != 0) | (y[:, col("Consolidation")] != 0)
    assert airspace[pneu].mean() > 0.6 > airspace[~pneu & ~nf].mean()
    assert (y == -1).any() and (y == -1).mean() < (y == 1).mean()


def test_no_finding_draws_nothing():
    gen = PhantomGenerator(SIZE)
    np.testing.assert_array_equal(gen.generate(one_hot("No Finding"), 5), gen.generate(one_hot(), 5))


@pytest.mark.parametrize("seed", SEEDS)
def test_cardiomegaly_widens_heart(seed):
    clean, sick, lm = pair("Cardiomegaly", seed)
    clean_lm = PhantomGenerator(SIZE).landmarks(one_hot(), seed)
    assert lm["ctr"][0] > 0.5 > clean_lm["ctr"][0]
    level = clean_lm["heart_level"][0]
    threshold = 0.5 * (window(clean, lm["lung_center"][0, 0]) + window(clean, level))
    w_clean = bright_run(clean, level, threshold)
    w_sick = bright_run(sick, level, threshold)
    assert w_sick >= w_clean + 3
    assert w_sick / lm["thorax_width_px"][0] > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_enlarged_cardiomediastinum_widens_mediastinum(seed):
    clean, sick, lm = pair("Enlarged Cardiomediastinum", seed)
    point = lm["upper_mediastinum"][0]
    threshold = 0.5 * (window(clean, lm["lung_center"][0, 0]) + window(clean, point, 1))
    assert bright_run(sick, point, threshold) >= bright_run(clean, point, threshold) + 2


@pytest.mark.parametrize("seed", SEEDS)
def test_effusion_fills_costophrenic_angle(seed):
    clean, sick, lm = pair("Pleural Effusion", seed)
    side = lm["Pleural Effusion_side"][0]
    sides = (0, 1) if side == 2 else (side,)
    for k in sides:
        assert window(sick - clean, lm["costophrenic_angle"][0, k], 1) > 0.05
        assert abs(window(sick - clean, lm["lung_center"][0, k] - [0, 6], 1)) < 0.02, "upper lung stays clear"
    if side != 2:
        assert abs(window(sick - clean, lm["costophrenic_angle"][0, 1 - side], 1)) < 0.02


@pytest.mark.parametrize("seed", SEEDS)
def test_pneumothorax_darkens_lateral_lung(seed):
    clean, sick, lm = pair("Pneumothorax", seed)
    k = lm["Pneumothorax_side"][0]
    assert window(sick - clean, lm["lung_lateral"][0, k], 1) < -0.03
    assert abs(window(sick - clean, lm["lung_medial"][0, k], 1)) < 0.02
    assert abs(window(sick - clean, lm["lung_lateral"][0, 1 - k], 1)) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_lung_lesion_is_a_bright_round_nodule(seed):
    clean, sick, lm = pair("Lung Lesion", seed)
    diff = sick - clean
    c, r = lm["nodule_center"][0], lm["nodule_radius_px"][0]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dist = np.hypot(xx - c[0], yy - c[1])
    assert diff[dist <= max(r - 1, 1)].mean() > 0.08
    assert np.abs(diff[dist > r + 3]).max() < 1e-6


def lung_half(diff: np.ndarray, lm: dict, k: int) -> np.ndarray:
    """The image half holding lung k (split at the midline)."""
    split = int(round(float(lm["upper_mediastinum"][0, 0])))
    return diff[:, :split] if k == 0 else diff[:, split:]


@pytest.mark.parametrize("name", ["Consolidation", "Pneumonia", "Lung Opacity", "Atelectasis", "Pleural Other"])
@pytest.mark.parametrize("seed", SEEDS)
def test_unilateral_lung_signs_brighten_one_lung(name, seed):
    clean, sick, lm = pair(name, seed)
    diff = sick - clean
    k = lm[f"{name}_side"][0]
    assert lung_half(diff, lm, k).clip(0).sum() > 4.0
    assert np.abs(lung_half(diff, lm, 1 - k)).sum() < 0.1 * lung_half(diff, lm, k).clip(0).sum()


@pytest.mark.parametrize("seed", SEEDS)
def test_atelectasis_band_is_basal(seed):
    clean, sick, lm = pair("Atelectasis", seed)
    diff = np.clip(sick - clean, 0, None)
    k = lm["Atelectasis_side"][0]
    rows = np.arange(SIZE)
    centroid_y = (diff.sum(axis=1) * rows).sum() / diff.sum()
    assert centroid_y > lm["lung_center"][0, k, 1]


def texture(diff: np.ndarray) -> float:
    """Mean |Laplacian| inside the dense part of a sign, relative to its mean: high for branching lucencies."""
    lap = np.abs(4 * diff[1:-1, 1:-1] - diff[:-2, 1:-1] - diff[2:, 1:-1] - diff[1:-1, :-2] - diff[1:-1, 2:])
    inner = diff[1:-1, 1:-1]
    dense = inner > 0.5 * inner.max()
    return float(lap[dense].mean() / inner[dense].mean())


def test_pneumonia_has_air_bronchograms():
    """Pneumonia's opacity is crossed by darker air-filled bronchi: more fine texture than plain consolidation."""
    pna = np.mean([texture(pair("Pneumonia", s)[1] - pair("Pneumonia", s)[0]) for s in range(8)])
    cons = np.mean([texture(pair("Consolidation", s)[1] - pair("Consolidation", s)[0]) for s in range(8)])
    assert pna > 1.2 * cons


@pytest.mark.parametrize("seed", SEEDS)
def test_edema_is_bilateral_perihilar(seed):
    clean, sick, lm = pair("Edema", seed)
    diff = sick - clean
    for k in (0, 1):
        assert window(diff, lm["lung_center"][0, k], 2) > 0.03
        assert window(diff, lm["lung_center"][0, k], 2) > window(diff, lm["lung_lateral"][0, k], 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_pleural_thickening_along_lateral_wall(seed):
    clean, sick, lm = pair("Pleural Other", seed)
    diff = sick - clean
    k = lm["Pleural Other_side"][0]
    centre = lm["lung_center"][0, k]
    wall = centre + 1.2 * (lm["lung_lateral"][0, k] - centre)  # just inside the lateral chest wall
    assert window(diff, wall, 1) > window(diff, centre, 1) + 0.03


@pytest.mark.parametrize("seed", SEEDS)
def test_support_device_is_a_thin_bright_line(seed):
    clean, sick, _ = pair("Support Devices", seed)
    diff = sick - clean
    assert diff.max() > 0.15
    assert 5 < (diff > 0.08).sum() < 0.08 * diff.size
    assert diff.min() > -0.05


@pytest.mark.parametrize("seed", SEEDS)
def test_fracture_is_local_to_the_rib(seed):
    clean, sick, lm = pair("Fracture", seed)
    diff = np.abs(sick - clean)
    fx, fy = lm["fracture_point"][0]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    near = np.hypot(xx - fx, yy - fy) <= 6
    assert diff[near].max() > 0.05
    assert diff[~near].max() < 0.5 * diff[near].max()


@pytest.mark.parametrize(
    "name", ["Cardiomegaly", "Lung Lesion", "Pleural Effusion", "Pneumothorax", "Edema", "Consolidation"]
)
def test_uncertain_label_draws_a_weaker_sign(name):
    clean, sure, _ = pair(name, 7)
    _, unsure, _ = pair(name, 7, value=-1.0)
    strong, weak = np.abs(sure - clean).sum(), np.abs(unsure - clean).sum()
    assert 0 < weak < strong


def test_save_phantom_grid(tmp_path):
    path = save_phantom_grid(tmp_path / "fig" / "grid.png", image_size=48, seed=1)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
