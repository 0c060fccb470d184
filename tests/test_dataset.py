"""The data interface: image sets (in memory, on disk, subsets), text pools, zero-shot tasks, datasets."""

import numpy as np
import pytest
from PIL import Image

from artmed.data.dataset import (
    ArrayImageSet,
    FileImageSet,
    ImageSet,
    MedDataset,
    SubsetImageSet,
    TextPool,
    ZeroShotTask,
    preprocess_image,
    read_image_file,
    register_reader,
)


def labels(n: int, col: int = 0) -> np.ndarray:
    y = np.zeros((n, 14), dtype=np.float32)
    y[:, col] = 1
    return y


def images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, size, size), dtype=np.float32)


def test_array_image_set_serves_batches_and_items():
    x = images(5)
    ds = ArrayImageSet(x, labels(5))
    assert isinstance(ds, ImageSet) and len(ds) == 5
    assert ds.image_shape == (1, 8, 8) and ds.image_size == 8
    np.testing.assert_array_equal(ds.get_batch([3, 0, -1]), x[[3, 0, 4]])
    np.testing.assert_array_equal(ds.get_batch(np.array([True, False, False, False, True])), x[[0, 4]])
    assert ds.get_batch([]).shape == (0, 1, 8, 8)
    np.testing.assert_array_equal(ds[2], x[2])
    assert ds.labels.shape == (5, 14) and ds.labels.dtype == np.float32
    ds.labels[:] = 7  # a copy: the set is not changed through it
    assert ds.labels.max() == 1
    batches = list(ds.batches(2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    with pytest.raises(IndexError):
        ds.get_batch([5])
    with pytest.raises(TypeError):
        ds["a"]


def test_subset_and_to_array():
    x = images(6)
    y = labels(6)
    y[:, 5] = np.arange(6) % 2
    ds = ArrayImageSet(x, y)
    sub = ds.subset([4, 1])
    np.testing.assert_array_equal(sub.to_array(), x[[4, 1]])
    np.testing.assert_array_equal(sub.labels, y[[4, 1]])
    generic = SubsetImageSet(ds, np.array([5, 2, 0]))
    np.testing.assert_array_equal(generic.to_array(), x[[5, 2, 0]])
    np.testing.assert_array_equal(generic.subset([2]).to_array(), x[[0]])
    np.testing.assert_array_equal(generic.labels, y[[5, 2, 0]])
    with pytest.raises(ValueError, match="max_bytes"):
        generic.to_array(max_bytes=100)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((3, 8, 8)), labels(3), "shape"),
        (np.zeros((3, 3, 8, 8)), labels(3), "shape"),
        (np.zeros((3, 1, 8, 8)), labels(2), "rows"),
        (np.zeros((3, 1, 8, 8)), np.zeros((3, 13)), r"\(N, 14\)"),
        (np.full((2, 1, 4, 4), 1.5), labels(2), r"\[0, 1\]"),
        (np.full((2, 1, 4, 4), np.nan), labels(2), "NaN"),
    ],
)
def test_array_image_set_validation(x, y, match):
    with pytest.raises(ValueError, match=match):
        ArrayImageSet(x, y)


def test_label_values_are_checked_and_located():
    y = labels(3)
    y[2, 7] = 0.5
    with pytest.raises(ValueError, match=r"row 2, column 7 \('Pneumonia'\)"):
        ArrayImageSet(np.zeros((3, 1, 4, 4)), y)
    y[2, 7] = np.nan
    with pytest.raises(ValueError, match="1, 0 or -1"):
        TextPool(["a", "b", "c"], y)


def test_preprocess_pads_to_square_and_resizes():
    arr = np.ones((10, 20), dtype=np.float32)
    out = preprocess_image(arr, 20)
    assert out.shape == (20, 20) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:5], 0.0)  # padding rows above, centred
    np.testing.assert_array_equal(out[15:], 0.0)
    np.testing.assert_allclose(out[6:14], 1.0, atol=1e-6)
    small = preprocess_image(np.full((7, 3), 0.5, dtype=np.float32), 16)
    assert small.shape == (16, 16) and 0.0 <= small.min() and small.max() <= 1.0
    assert small[:, :4].max() < 0.05 and abs(small[8, 8] - 0.5) < 0.05


def write_png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def test_file_image_set_reads_pngs_lazily(tmp_path):
    wide = np.zeros((40, 80), dtype=np.uint8)
    wide[:, 40:] = 255
    tall16 = np.full((60, 30), 65535, dtype=np.uint16)
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    paths = [
        write_png(tmp_path / "wide.png", wide),
        write_png(tmp_path / "tall16.png", tall16),
        write_png(tmp_path / "rgb.png", rgb),
    ]
    ds = FileImageSet(paths, labels(3), image_size=32)
    assert ds.image_shape == (1, 32, 32) and len(ds) == 3
    batch = ds.get_batch([0, 1, 2])
    assert batch.shape == (3, 1, 32, 32) and batch.dtype == np.float32
    assert batch.min() >= 0.0 and batch.max() <= 1.0
    a = batch[0, 0]  # 40x80 -> padded to 80x80 (20 rows of zeros above and below) -> 32x32
    assert a[:7].max() < 0.02 and a[-7:].max() < 0.02
    assert a[16, :14].max() < 0.05 and a[16, 18:].min() > 0.95
    b = batch[1, 0]  # 16-bit white, 60x30 -> columns padded left and right
    assert b[:, :7].max() < 0.02 and b[:, -7:].max() < 0.02 and b[16, 16] > 0.98
    assert abs(batch[2, 0, 16, 16] - 0.299) < 0.01  # luminance of pure red
    sub = ds.subset([2])
    assert isinstance(sub, FileImageSet) and sub.paths == [paths[2]]
    np.testing.assert_array_equal(sub[0], batch[2])


def test_corrupt_file_names_the_file(tmp_path):
    good = write_png(tmp_path / "good.png", np.zeros((8, 8), dtype=np.uint8))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    ds = FileImageSet([good, bad, tmp_path / "missing.jpg"], labels(3), image_size=8)
    assert ds[0].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="broken.png"):
        ds[1]
    with pytest.raises(ValueError, match="missing.jpg"):
        ds.get_batch([2])
    with pytest.raises(ValueError, match="rows"):
        FileImageSet([good], labels(2))


def test_registered_reader_handles_its_suffix(tmp_path):
    path = tmp_path / "scan.fake"
    path.write_bytes(b"anything")
    register_reader(".fake", lambda p: np.full((4, 8), 0.25, dtype=np.float32))
    out = read_image_file(path)
    assert out.shape == (4, 8) and out.max() == 0.25
    img = FileImageSet([path], labels(1), image_size=8)[0]
    assert img.shape == (1, 8, 8) and img[0, 0, 0] == 0.0 and abs(img[0, 4, 4] - 0.25) < 0.02
    with pytest.raises(ValueError, match="start with"):
        register_reader("fake", lambda p: p)


def test_text_pool_validation():
    pool = TextPool(["heart size is normal", "small left effusion"], labels(2))
    assert len(pool) == 2 and pool.labels.dtype == np.float32
    assert pool.subset([1]).sentences == ["small left effusion"]
    with pytest.raises(ValueError, match="rows"):
        TextPool(["a"], labels(2))
    with pytest.raises(ValueError, match="list of strings"):
        TextPool("abc", labels(3))
    with pytest.raises(ValueError, match="empty"):
        TextPool(["ok", "  "], labels(2))


def make_task(**overrides):
    kwargs = dict(
        name="t",
        class_names=["Normal", "Pneumonia"],
        prompts={"Normal": ["the lungs are clear"], "Pneumonia": ["a lobar pneumonia", "patchy consolidation"]},
        images=ArrayImageSet(images(3), labels(3)),
        targets=np.array([0, 1, 1]),
    )
    kwargs.update(overrides)
    return ZeroShotTask(**kwargs)


def test_zero_shot_task_validation():
    task = make_task()
    assert task.num_classes == 2 and task.targets.dtype == np.int64
    with pytest.raises(ValueError, match="'Pneumonia' needs at least one"):
        make_task(prompts={"Normal": ["clear"], "Pneumonia": []})
    with pytest.raises(ValueError, match="'Pneumonia' needs at least one"):
        make_task(prompts={"Normal": ["clear"]})
    with pytest.raises(ValueError, match="unknown classes"):
        make_task(prompts={"Normal": ["a"], "Pneumonia": ["b"], "Edema": ["c"]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_task(targets=np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="3 images"):
        make_task(targets=np.array([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        make_task(targets=np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="ImageSet"):
        make_task(images=images(3))
    with pytest.raises(ValueError, match="at least 2"):
        make_task(class_names=["Normal"], prompts={"Normal": ["a"]})


def test_med_dataset_validation():
    train = ArrayImageSet(images(4), labels(4))
    texts = TextPool(["no acute findings"], labels(1))
    ds = MedDataset(train, texts, {"t": make_task()})
    assert set(ds.tasks) == {"t"}
    with pytest.raises(ValueError, match="keys must equal"):
        MedDataset(train, texts, {"other": make_task()})
    with pytest.raises(ValueError, match="TextPool"):
        MedDataset(train, ["no acute findings"], {})
    with pytest.raises(ValueError, match="ImageSet"):
        MedDataset(images(4), texts, {})
