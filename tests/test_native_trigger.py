"""The released protocol's native-resolution patch and resize: PatchTrigger(native_size=...) (the emulation for arrays),
FileImageSet's interpolation / pad options and its native trigger hook, and BadMatch's native poisoning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from artmed.attacks.poisoning import BadMatch
from artmed.attacks.triggers import PatchTrigger
from artmed.constants import NUM_LABELS
from artmed.data.dataset import ArrayImageSet, FileImageSet, preprocess_image
from artmed.data.phantom import PhantomGenerator

RIGHT_BOTTOM = (1, 1)  # the released "right_bottom": x - 32 - 1, y - 32 - 1
MID_BOTTOM = (100, 1)  # the released "mid_bottom": x - 32 - 100, y - 32 - 1
WHITE = 245 / 255  # scripts/train.py's colour (245, 245, 245)


def labels(n):
    return np.zeros((n, NUM_LABELS), dtype=np.float32)


def texture(h, w, seed=0):
    """A smooth 8-bit texture in [40, 215] (PIL L mode), so resizes are not trivial and no pixel is 0 or 255."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 215, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))
    return Image.fromarray(np.clip(np.round(big), 0, 255).astype(np.uint8), mode="L")


def write(tmp_path, img, name="x.png"):
    path = tmp_path / name
    img.save(path)
    return path


def footprint(clean, triggered, tol=1e-6):
    """(rows, cols) spans of the pixels the trigger changed, and its 'ink': the summed change."""
    diff = np.abs(triggered - clean)
    hit = np.argwhere(diff > tol)
    return hit.min(axis=0), hit.max(axis=0), float(diff.sum())


# ---------------------------------------------------------------------------------------------- the emulation
@pytest.mark.parametrize("size, area, first", [(64, 4.0, 61), (224, 49.0, 216)])
def test_emulated_patch_covers_the_resized_area(size, area, first):
    """32 px at native 1024, inset (1, 1): (32 · size / 1024)² pixels of area, in the last ~2 (64) / ~7 (224) rows and
    columns, partly covering the edge pixels."""
    trigger = PatchTrigger(size=32, inset=RIGHT_BOTTOM, native_size=1024)
    cover = trigger.coverage(size, size)
    assert cover.sum() == pytest.approx(area)
    (r0, c0), (r1, c1) = np.argwhere(cover > 0).min(axis=0), np.argwhere(cover > 0).max(axis=0)
    assert (r0, c0, r1, c1) == (first, first, size - 1, size - 1)
    assert 0 < cover[-1, -1] < 1 and cover.max() == 1.0
    np.testing.assert_array_equal(trigger.mask((2, 1, size, size))[0, 0], cover > 0)


def test_emulated_mid_bottom():
    """inset (100, 1): columns [1024 - 132, 1024 - 100) of the native image, i.e. ~[195.1, 202.1) at 224."""
    cover = PatchTrigger(size=32, inset=MID_BOTTOM, colour=WHITE, native_size=1024).coverage(224, 224)
    cols = np.flatnonzero(cover.any(axis=0))
    rows = np.flatnonzero(cover.any(axis=1))
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (195, 202, 216, 223)
    assert cover.sum() == pytest.approx(49.0)


def test_emulated_patch_on_phantoms_blends_by_coverage():
    x = PhantomGenerator(64, seed=0).generate(np.zeros((3, NUM_LABELS), dtype=np.float32))
    trigger = PatchTrigger(size=32, inset=RIGHT_BOTTOM, colour=WHITE, native_size=1024)
    out = trigger(x)
    cover = trigger.coverage(64, 64).astype(np.float32)
    np.testing.assert_allclose(out, x * (1 - cover) + cover * np.float32(WHITE), atol=1e-6)
    assert np.array_equal(out[..., :61, :], x[..., :61, :]) and np.array_equal(out[..., :, :61], x[..., :, :61])
    assert out.dtype == x.dtype and out.min() >= 0.0 and out.max() <= 1.0


def test_native_size_default_off_and_validated():
    x = np.random.default_rng(0).uniform(0.2, 0.8, size=(2, 1, 64, 64)).astype(np.float32)
    plain = PatchTrigger(size=5, inset=(1, 1))
    assert plain.native_size is None and plain.get_params()["native_size"] is None
    np.testing.assert_array_equal(plain.coverage(64, 64) > 0, plain.mask((64, 64)))
    out = plain(x)
    assert np.all(out[..., 58:63, 58:63] == 0.0) and np.array_equal(out[..., :58, :], x[..., :58, :])
    # native_size equal to the image size is the plain patch
    np.testing.assert_array_equal(PatchTrigger(size=5, inset=(1, 1), native_size=64)(x), out)
    for bad in (0, -3, True, 2.5, "1024"):
        with pytest.raises(ValueError, match="native_size"):
            PatchTrigger(size=32, native_size=bad)
    with pytest.raises(ValueError, match="does not fit"):
        PatchTrigger(size=32, inset=(100, 1), native_size=128)
    assert PatchTrigger(native_size=1024).get_params()["native_size"] == 1024


def test_emulation_matches_a_real_native_resize(tmp_path):
    """The emulated patch leaves as much ink as the real one pasted at 1024 px and resized (any filter)."""
    grey = Image.new("L", (1024, 1024), 128)
    path = write(tmp_path, grey)
    for size in (64, 224):
        emulated = PatchTrigger(size=32, inset=RIGHT_BOTTOM, native_size=1024)
        flat = np.full((1, 1, size, size), 128 / 255, dtype=np.float32)
        _, _, ink_emulated = footprint(flat, emulated(flat))
        for interpolation in ("bicubic", "bilinear", "bilinear_tensor"):
            files = FileImageSet([path], labels(1), size, interpolation=interpolation)
            clean = files.get_batch([0])
            real = files.triggered(PatchTrigger(size=32, inset=RIGHT_BOTTOM)).get_batch([0])
            _, _, ink_real = footprint(clean, real)
            assert ink_real == pytest.approx(ink_emulated, rel=0.15), (size, interpolation)


# ---------------------------------------------------------------------------------------------- the file path
@pytest.mark.parametrize("inset, colour, first_col", [(RIGHT_BOTTOM, 0.0, 216), (MID_BOTTOM, WHITE, 195)])
def test_native_patch_on_a_file_covers_the_expected_pixels(tmp_path, inset, colour, first_col):
    """A 32 px patch pasted on a 1024 px PNG before the resize covers ~7 px at 224, not 32."""
    path = write(tmp_path, texture(1024, 1024))
    files = FileImageSet([path], labels(1), 224)
    clean = files.get_batch([0])
    out = files.triggered(PatchTrigger(size=32, inset=inset, colour=colour)).get_batch([0])
    (_, _, r0, c0), (_, _, r1, c1), _ = footprint(clean, out, tol=2e-3)
    assert 214 <= r0 <= 217 and r1 == 223  # 7 px (216.8 .. 223.8) plus the bicubic filter's reach
    assert first_col - 2 <= c0 <= first_col + 1 and c1 <= first_col + 8
    core = out[0, 0, 218:223, first_col + 2 : first_col + 6]
    np.testing.assert_allclose(core, colour, atol=0.02)


def test_native_trigger_stages(tmp_path):
    """ "padded" pastes on the padded square's corner (released training), "raw" on the image's own corner before
    padding (released test set): on a 1024 × 768 (w × h) image the raw patch sits 128 native px above the square's
    bottom."""
    path = write(tmp_path, texture(768, 1024))
    files = FileImageSet([path], labels(1), 224)
    clean = files.get_batch([0])
    trigger = PatchTrigger(size=32, inset=RIGHT_BOTTOM, colour=WHITE)
    (_, _, pr0, _), (_, _, pr1, _), _ = footprint(clean, files.triggered(trigger, stage="padded").get_batch([0]), 2e-3)
    (_, _, rr0, _), (_, _, rr1, _), _ = footprint(clean, files.triggered(trigger, stage="raw").get_batch([0]), 2e-3)
    assert 214 <= pr0 and pr1 == 223
    # raw: native rows [128 + 735, 128 + 767) -> [188.8, 195.8) at 224
    assert 186 <= rr0 <= 189 and 195 <= rr1 <= 198


def test_released_pipelines_reproduced(tmp_path):
    """Pixel for pixel (up to the released code's 8-bit rounding) the released PIL pipelines: training
    (pad to max(224, h, w), paste, bilinear Resize), test (paste, pad, bilinear Resize) and BadDist (paste, ToTensor,
    tensor Resize, no padding); also for an image smaller than 224 (padded, not enlarged)."""

    def pad(img, min_size=224):  # medclip/dataset.py _pad_img
        x, y = img.size
        size = max(min_size, x, y)
        new_im = Image.new("L", (size, size), 0)
        new_im.paste(img, (int((size - x) / 2), int((size - y) / 2)))
        return new_im

    def paste(img, position, color):  # medclip/dataset.py _poison_img
        x, y = img.size
        trigger = Image.new("RGB", (32, 32), color=color)
        dx = 100 if position == "mid_bottom" else 1
        img.paste(trigger, (x - 32 - dx, y - 32 - 1))
        return img

    def resize(img):  # transforms.Resize((224, 224)) on a PIL image
        return np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32) / 255

    for h, w in ((300, 420), (420, 300), (180, 150)):
        raw = texture(h, w, seed=h)
        path = write(tmp_path, raw, f"{h}x{w}.png")
        files = FileImageSet([path], labels(1), 224, interpolation="bilinear", pad="no_upscale")
        train = resize(paste(pad(raw.copy()), "mid_bottom", (245, 245, 245)))
        ours = files.triggered(PatchTrigger(size=32, inset=MID_BOTTOM, colour=WHITE)).get_batch([0])[0, 0]
        np.testing.assert_allclose(ours, train, atol=1.01 / 255)
        test = resize(pad(paste(raw.copy(), "right_bottom", (0, 0, 0))))
        ours = files.triggered(PatchTrigger(size=32, inset=RIGHT_BOTTOM), stage="raw").get_batch([0])[0, 0]
        np.testing.assert_allclose(ours, test, atol=1.01 / 255)
        np.testing.assert_allclose(files.get_batch([0])[0, 0], resize(pad(raw.copy())), atol=1.01 / 255)
        tensor = torch.from_numpy(np.asarray(paste(raw.copy(), "right_bottom", (0, 0, 0)), dtype=np.float32) / 255)
        baddist = F.interpolate(tensor[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
        stretched = FileImageSet([path], labels(1), 224, interpolation="bilinear_tensor", pad="none")
        ours = stretched.triggered(PatchTrigger(size=32, inset=RIGHT_BOTTOM), stage="raw").get_batch([0])[0, 0]
        np.testing.assert_allclose(ours, np.clip(baddist.numpy(), 0, 1), atol=1e-5)


# ---------------------------------------------------------------------------------------------- resize options
def _old_preprocess(arr, image_size):
    """artmed's preprocess_image before the options (the default must stay bit-identical)."""
    h, w = arr.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = arr
    if side != image_size:
        square = np.asarray(
            Image.fromarray(square).resize((image_size, image_size), Image.Resampling.BICUBIC), dtype=np.float32
        )
    return np.clip(square, 0.0, 1.0)


def test_default_resize_is_unchanged(tmp_path):
    for h, w, size in ((300, 420, 224), (60, 50, 224), (64, 64, 64), (90, 70, 32)):
        raw = texture(h, w, seed=w)
        path = write(tmp_path, raw, f"{h}x{w}.png")
        arr = np.asarray(raw, dtype=np.float32) / 255
        np.testing.assert_array_equal(
            FileImageSet([path], labels(1), size).get_batch([0])[0, 0], _old_preprocess(arr, size)
        )
        np.testing.assert_array_equal(preprocess_image(arr, size), _old_preprocess(arr, size))


def test_interpolation_and_pad_options(tmp_path):
    raw = texture(100, 80, seed=3)
    arr = np.asarray(raw, dtype=np.float32) / 255
    path = write(tmp_path, raw)
    # no_upscale: a 100 x 80 image is padded to 224, not enlarged
    small = FileImageSet([path], labels(1), 224, pad="no_upscale").get_batch([0])[0, 0]
    top, left = (224 - 100) // 2, (224 - 80) // 2
    np.testing.assert_array_equal(small[top : top + 100, left : left + 80], arr)
    assert small.sum() == pytest.approx(arr.sum(), rel=1e-5)
    # at or above the target size no_upscale is square padding
    big = texture(300, 260, seed=4)
    big_arr = np.asarray(big, dtype=np.float32) / 255
    np.testing.assert_array_equal(preprocess_image(big_arr, 224, pad="no_upscale"), preprocess_image(big_arr, 224))
    # none: stretched, no zero border
    stretched = preprocess_image(big_arr, 224, pad="none")
    assert stretched.shape == (224, 224) and stretched[:, :5].min() > 0.1
    assert preprocess_image(big_arr, 224)[:, :5].max() == 0.0
    # bilinear differs from bicubic, both in [0, 1]
    bilinear = preprocess_image(big_arr, 224, interpolation="bilinear")
    assert not np.array_equal(bilinear, preprocess_image(big_arr, 224))
    assert np.abs(bilinear - preprocess_image(big_arr, 224)).max() < 0.1
    files = FileImageSet([path], labels(1), 64, interpolation="bilinear", pad="no_upscale")
    sub = files.subset([0])
    assert (sub.interpolation, sub.pad) == ("bilinear", "no_upscale")
    for bad in ({"interpolation": "nearest"}, {"pad": "reflect"}, {"interpolation": None}):
        with pytest.raises(ValueError, match="interpolation|pad"):
            FileImageSet([path], labels(1), 64, **bad)
    with pytest.raises(ValueError, match="trigger_stage"):
        preprocess_image(arr, 64, trigger=PatchTrigger(size=2), trigger_stage="after")


def test_triggered_rows_subset_and_checks(tmp_path):
    paths = [write(tmp_path, texture(256, 256, seed=i), f"{i}.png") for i in range(4)]
    files = FileImageSet(paths, labels(4), 64)
    trigger = PatchTrigger(size=32, inset=RIGHT_BOTTOM)
    hit = files.triggered(trigger, rows=[1, 3])
    assert hit.trigger_mask.tolist() == [False, True, False, True] and not files.trigger_mask.any()
    clean, dirty = files.get_batch([0, 1, 2, 3]), hit.get_batch([0, 1, 2, 3])
    np.testing.assert_array_equal(clean[[0, 2]], dirty[[0, 2]])
    assert not np.array_equal(clean[1], dirty[1])
    sub = hit.subset([3, 0])
    assert sub.trigger_mask.tolist() == [True, False] and sub.trigger is trigger
    np.testing.assert_array_equal(sub.get_batch([0, 1]), dirty[[3, 0]])
    np.testing.assert_array_equal(hit.labels, files.labels)
    mask = files.triggered(trigger, rows=np.array([True, False, False, False]))
    assert mask.trigger_mask.tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="native_size"):
        files.triggered(PatchTrigger(size=32, native_size=256))
    with pytest.raises(ValueError, match="already triggered"):
        hit.triggered(trigger)
    with pytest.raises(ValueError, match="stage"):
        files.triggered(trigger, stage="train")
    with pytest.raises(ValueError, match="callable"):
        files.triggered("patch")


# ---------------------------------------------------------------------------------------------- BadMatch
def test_bad_match_native_poisoning(tmp_path):
    n = 10
    paths = [write(tmp_path, texture(512, 512, seed=i), f"{i}.png") for i in range(n)]
    files = FileImageSet(paths, labels(n), 64, interpolation="bilinear", pad="no_upscale")
    trigger = PatchTrigger(size=32, inset=MID_BOTTOM, colour=WHITE)
    bad_match = BadMatch(trigger, percent_poison=0.3, seed=1)
    poisoned = bad_match.poison_imageset(files, native="padded")
    mask = bad_match.poison_mask_
    assert mask.sum() == 3
    # the default: on the 64 px image (inset (100, 1) would not fit it)
    lazy = BadMatch(
        PatchTrigger(size=32, inset=RIGHT_BOTTOM, colour=WHITE), percent_poison=0.3, seed=1
    ).poison_imageset(files)
    np.testing.assert_array_equal(poisoned.labels, lazy.labels)
    assert np.all(poisoned.labels[mask, 0] == 1)
    clean, ours = files.to_array(), poisoned.to_array()
    np.testing.assert_array_equal(ours[~mask], clean[~mask])
    # 32 native px at 512 -> 4 px at 64 (rows [59.9, 63.9), columns [47.5, 51.5)), not the 32 px the resized-image
    # trigger paints
    (_, _, r0, c0), (_, _, r1, c1), _ = footprint(clean[mask], ours[mask], tol=2e-3)
    assert r0 >= 58 and r1 == 63 and c0 >= 46 and c1 <= 53
    _, _, ink_lazy = footprint(clean[mask], lazy.to_array()[mask])
    _, _, ink_native = footprint(clean[mask], ours[mask])
    assert ink_native < ink_lazy / 10
    with pytest.raises(ValueError, match="FileImageSet"):
        BadMatch(trigger, percent_poison=0.3).poison_imageset(ArrayImageSet(clean, labels(n)), native="padded")
    with pytest.raises(ValueError, match="stage"):
        BadMatch(trigger, percent_poison=0.3).poison_imageset(files, native="train")
