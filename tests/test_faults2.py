"""Nothing lost, nothing silently wrong (issue 24, second part): what used to fail only after training, or exit 0
with empty tables, is refused up front naming the field; a full disk or an unwritable folder is a clear error that
keeps every finished file; checkpoints in a training wrapper load."""

import errno
import os
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from artmed.constants import CHEXPERT_LABELS
from artmed.evaluations import harness as harness_module
from artmed.evaluations import report as report_module
from artmed.evaluations import store as store_module
from artmed.evaluations.cli import main
from artmed.evaluations.store import OutputWriteError
from artmed.models import build_medclip, load_medclip, save_medclip, save_released
from artmed.models import checkpoint as checkpoint_module
from test_adapters import label_row, write_csv

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*label group:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*as their only finding:UserWarning"),
]

TINY = {
    "data": {"n_train": 40, "n_test": 10, "n_shadow": 8, "image_size": 32},
    "pretrain": {"steps": 2, "batch_size": 8},
    "train": {"steps": 2, "batch_size": 8},
    "attacks": [{"attack": "clean"}],
}


def run(tmp_path, config: dict, *extra: str) -> int:
    """``artmed run`` on ``config`` (YAML) with output ``tmp_path/out``."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), **config}))
    return main(["run", "--config", str(path), "--quiet", *extra])


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a model is built (the first step of any training)."""
    monkeypatch.setattr(harness_module, "build_base_estimator", lambda *a, **k: pytest.fail("a model was trained"))


# ---------------------------------------------------------------------------------------------- 7, 5: the config
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"attacks": []}, r"config\.attacks: no attack listed"),
        (
            {
                "attacks": [{"attack": "badmatch"}],
                "defenses": [{"name": "spectral_signatures", "attacks": ["baddist"]}],
            },
            r"config\.defenses\[0\]\.attacks: \['baddist'\] matches none of the study's attacks \['badmatch'\]",
        ),
        (
            {"attacks": [{"attack": "clean"}], "defenses": [{"name": "spectral_signatures", "attacks": []}]},
            r"config\.defenses\[0\]\.attacks: \[\] matches none",
        ),
        (
            {"attacks": [{"attack": "badmatch", "target": "Cardiomegaly"}]},
            r"config\.attacks\[0\]\.target: 'Cardiomegaly' is no class of the headline task 'rsna_like'",
        ),
        ({"data": {"n_train": 5000000, "image_size": 224}}, r"config\.data\.n_train: the phantom source generates"),
        ({"data": {"n_test": 20000, "image_size": 224}}, r"config\.data\.n_test: 20000 test images per task"),
    ],
)
def test_config_that_would_score_nothing_or_run_out_of_memory_is_refused(
    tmp_path, capsys, no_training, changes, message
):
    assert run(tmp_path, {**TINY, **changes}) == 2
    assert re.search(message, error_of(capsys))
    assert not (tmp_path / "out" / "cells").exists()


def test_a_target_of_the_headline_task_is_accepted(tmp_path, no_training):
    with pytest.raises(pytest.fail.Exception, match="a model was trained"):
        run(tmp_path, {**TINY, "task": "chexpert5", "attacks": [{"attack": "badmatch", "target": "Cardiomegaly"}]})


# ---------------------------------------------------------------------------------------------- 7: a seed's data
def write_png(path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), value, dtype=np.uint8)).save(path)
    return path.name


def medclip_layout(root, n: int = 12, missing: int | None = None, task_classes=(0, 1, 0, 1)) -> dict:
    """A MedCLIP local_data folder (train meta-CSV, sentence-label.csv) and an RSNA meta-CSV task; the study config."""
    findings = ["No Finding", "Pneumonia", "Edema"]
    rows = []
    for i in range(n):
        name = write_png(root / "img" / f"t{i}.png", 10 * i)
        rows.append([f"img/{name}", *label_row(**{findings[i % 3]: "1"})])
    if missing is not None:
        (root / "img" / f"t{missing}.png").unlink()
    write_csv(root / "train-meta.csv", ["imgpath", *CHEXPERT_LABELS], rows)
    write_csv(
        root / "sentence-label.csv",
        ["Reports", *CHEXPERT_LABELS],
        [["no effusion", *label_row(**{"No Finding": "1"})], ["mild edema", *label_row(Edema="1")]],
    )
    task = [[f"img/{write_png(root / 'img' / f'q{i}.png', 200 + i)}", 1 - k, k] for i, k in enumerate(task_classes)]
    write_csv(root / "rsna-test-meta.csv", ["imgpath", "Normal", "Pneumonia"], task)
    return {
        "model": {"image_size": 16},
        "data": {
            "source": "medclip_csv",
            "root": str(root / "train-meta.csv"),
            "reports_root": str(root / "sentence-label.csv"),
            "n_shadow": 2,
        },
        "tasks": [{"name": "rsna", "source": "rsna", "root": str(root / "rsna-test-meta.csv")}],
        "pretrain": {"steps": 2, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4},
        "attacks": [{"attack": "clean"}, {"attack": "badmatch", "percent_poison": 0.2}],
    }


@pytest.mark.parametrize(
    "layout, changes, message",
    [
        ({"missing": 5}, {}, r"config\.data\.root \(training images\): image file '.*t5\.png' does not exist"),
        (
            {"task_classes": (1, 1, 1)},
            {},
            r"config\.tasks\[0\]: task 'rsna' has test images of 1 class\(es\) only \['Pneumonia'\]",
        ),
        (
            {},
            {"attacks": [{"attack": "badmatch", "percent_poison": 1.0}]},
            r"config\.attacks\[0\]: percent_poison=1\.0 asks for 10 poisoned images but only \d+ of 10",
        ),
    ],
)
def test_data_that_would_fail_after_training_is_refused_before_it(
    tmp_path, capsys, no_training, layout, changes, message
):
    config = {**medclip_layout(tmp_path / "data", **layout), **changes}
    assert run(tmp_path, config) == 2
    assert re.search(message, error_of(capsys))


# ---------------------------------------------------------------------------------------------- 1: atomic writes
def _torn():
    """A writer that writes a few bytes of its file and then finds the disk full."""

    def write(obj, file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize(
    "save, name, writer",
    [(save_released, "pytorch_model.bin", "torch"), (save_medclip, "model.safetensors", "save_file")],
)
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, save, name, writer):
    model = build_medclip("tiny")
    file = save(model, tmp_path)
    before = file.read_bytes()
    if writer == "torch":
        monkeypatch.setattr(checkpoint_module.torch, "save", _torn())
    else:
        monkeypatch.setattr(checkpoint_module, "save_file", _torn())
    with pytest.raises(OutputWriteError, match=rf"cannot write .*{name}: No space left on device"):
        save(build_medclip("tiny"), tmp_path)
    monkeypatch.undo()
    assert file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    load_medclip(tmp_path, "tiny")


def _full_disk_for(suffix: str, monkeypatch) -> None:
    """Every atomic write of a ``suffix`` file fails as on a full disk."""
    real = store_module.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("prefix", "").endswith(f"{suffix}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp)


def test_a_figure_on_a_full_disk_is_a_clear_error_and_keeps_cells_and_tables(tmp_path, capsys, monkeypatch):
    _full_disk_for(".png", monkeypatch)
    assert run(tmp_path, TINY) == 2
    err = error_of(capsys)
    assert re.search(r"artmed run: error: cannot write .*figures/\w+\.png: No space left on device", err), err
    out = tmp_path / "out"
    assert (out / "cells" / "model" / "clean-s0.json").is_file() and (out / "models.csv").is_file()
    with pytest.raises(OutputWriteError, match=r"triggers\.png: No space left"):
        report_module.plot_trigger_examples(tmp_path / "triggers.png")


def test_the_phantom_figure_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    from artmed import files as files_module
    from artmed.data.phantom_plot import save_phantom_grid

    path = save_phantom_grid(tmp_path / "phantoms.png", image_size=32)
    before = path.read_bytes()

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_module.os, "replace", full)
    with pytest.raises(OutputWriteError, match=r"cannot write .*phantoms\.png: No space left on device"):
        save_phantom_grid(path, image_size=48)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["phantoms.png"]


# ---------------------------------------------------------------------------------------------- 4: unwritable folders
def test_an_unwritable_cells_folder_is_refused_up_front(tmp_path, capsys, no_training, monkeypatch):
    (tmp_path / "out" / "cells" / "model").mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real(path, mode) and not str(path).endswith("model"))
    assert run(tmp_path, TINY) == 2
    assert re.search(r"config\.output_dir: .*out/cells/model is not writable", error_of(capsys))


def test_a_folder_that_becomes_unwritable_stops_the_study_and_keeps_finished_cells(tmp_path, capsys, monkeypatch):
    assert run(tmp_path, TINY) == 0
    capsys.readouterr()
    finished = (tmp_path / "out" / "cells" / "model" / "clean-s0.json").read_bytes()
    real = store_module.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if "cells" in str(kwargs.get("dir", "")):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module.tempfile, "mkstemp", mkstemp)
    config = {**TINY, "attacks": [{"attack": "clean"}, {"attack": "badmatch", "percent_poison": 0.1}]}
    assert run(tmp_path, config) == 2
    err = error_of(capsys)
    written = r"cells/model/badmatch-patch-p0\.1-s0\.\w+\.?\w*"  # the npz sidecar or the cell
    assert re.search(
        rf"artmed run: error: cannot write .*{written}: Permission denied \(in folder .*cells/model\)", err
    ), err
    assert (tmp_path / "out" / "cells" / "model" / "clean-s0.json").read_bytes() == finished


# ---------------------------------------------------------------------------------------------- 8: wrapped checkpoints
@pytest.mark.parametrize("key", ["model", "state_dict", "model_state_dict"])
def test_a_checkpoint_in_a_training_wrapper_loads_with_a_note(tmp_path, key):
    model = build_medclip("tiny")
    torch.save({key: model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.warns(UserWarning, match=rf"using the weights under the '{key}' entry .*left out: epoch"):
        loaded = load_medclip(tmp_path / "ckpt.pt", "tiny")
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_a_checkpoint_with_the_weights_elsewhere_says_which_entry(tmp_path):
    torch.save({"ema": build_medclip("tiny").state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"the tensors are under \['ema'\]: save that entry alone"):
        load_medclip(tmp_path / "ckpt.pt", "tiny")


# ---------------------------------------------------------------------------------------------- 9: artmed separation
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0"], r"--seeds: must be a positive integer, got '0'"),
        (["--seeds", "-2"], r"--seeds: must be a positive integer, got '-2'"),
        (["--n-shadow", "0"], r"--n-shadow: must be a positive integer, got '0'"),
        (["--image-size", "-1"], r"--image-size: must be a positive integer"),
        (["--triggers", "nope"], r"--triggers nope: .*unknown trigger 'nope'"),
        (["--triggers", "patch:size=x"], r"--triggers: .*the value of 'size' is not JSON"),
        (["--baddist", "[1]"], r"--baddist: .*must be a JSON object"),
        (["--baddist", '{"bogus": 1}'], r"--triggers patch: .*bogus"),
        (["--out", "{tmp}"], r"--out .* is a folder; it must be a file"),
    ],
)
def test_separation_options_are_checked_before_any_training(tmp_path, capsys, monkeypatch, argv, message):
    from artmed.evaluations import separation as separation_module

    monkeypatch.setattr(separation_module, "separation", lambda *a, **k: pytest.fail("a base model was trained"))
    with pytest.raises(SystemExit) as exit_info:
        main(["separation", *[arg.replace("{tmp}", str(tmp_path)) for arg in argv]])
    assert exit_info.value.code == 2
    assert re.search(message, error_of(capsys))


# ---------------------------------------------------------------------------------------------- 3: duplicate rows
def test_an_image_listed_twice_with_other_labels_is_refused_naming_the_rows(tmp_path):
    from artmed.data.adapt_medclip import load_medclip_images

    for name in ("a", "b"):
        write_png(tmp_path / "img" / f"{name}.png", 100)
    rows = [
        ["img/a.png", *label_row(Edema="1")],
        ["img/b.png", *label_row(**{"No Finding": "1"})],
        ["img/a.png", *label_row(Pneumonia="1")],
    ]
    write_csv(tmp_path / "train-meta.csv", ["imgpath", *CHEXPERT_LABELS], rows)
    with pytest.raises(
        ValueError,
        match=r"train-meta\.csv: image '.*a\.png' is listed on data rows \[1, 3\] with "
        r"different labels \(row 1: Edema=1; row 3: Pneumonia=1\)",
    ):
        load_medclip_images(tmp_path / "train-meta.csv")


def test_an_image_listed_twice_with_the_same_labels_is_used_once_with_a_warning(tmp_path):
    from artmed.data.adapt_medclip import load_medclip_images

    for name in ("a", "b"):
        write_png(tmp_path / "img" / f"{name}.png", 100)
    rows = [
        ["img/a.png", *label_row(Edema="1")],
        ["img/b.png", *label_row(**{"No Finding": "1"})],
        ["img/a.png", *label_row(Edema="1.0")],
        ["img/a.png", *label_row(Edema="1")],
    ]
    write_csv(tmp_path / "train-meta.csv", ["imgpath", *CHEXPERT_LABELS], rows)
    with pytest.warns(
        UserWarning,
        match=r"1 image\(s\) are listed on several data rows .*rows \[1, 3, 4\]\); each "
        r"is used once \(2 row\(s\) left out\)",
    ) as record:
        images = load_medclip_images(tmp_path / "train-meta.csv")
    assert len([w for w in record if "several data rows" in str(w.message)]) == 1
    assert [p.name for p in images.paths] == ["a.png", "b.png"]
    assert images.labels[0, CHEXPERT_LABELS.index("Edema")] == 1 and images.labels[1, 0] == 1


# ---------------------------------------------------------------------------------------------- 2: 32-bit TIFFs
def test_32_bit_tiffs_of_one_source_keep_their_relative_brightness(tmp_path):
    from artmed.data.dataset import read_image_file

    ramp = np.linspace(0, 1, 64).reshape(8, 8)
    dark, bright = (ramp * 200).round(), (ramp * 200 * 216).round()  # one 16-bit source, 216x apart
    for name, values in (("dark", dark), ("bright", bright)):
        Image.fromarray(values.astype(np.int32)).save(tmp_path / f"{name}.tif")
        with Image.open(tmp_path / f"{name}.tif") as img:
            assert img.mode == "I"
    a, b = read_image_file(tmp_path / "dark.tif"), read_image_file(tmp_path / "bright.tif")
    np.testing.assert_allclose(a, dark / 65535, atol=1e-7)
    np.testing.assert_allclose(b, bright / 65535, atol=1e-6)
    assert b.max() / a.max() == pytest.approx(216)
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ValueError, match=r"wide\.tif.*span 70000\.\.70000, outside the 16-bit range"):
        read_image_file(tmp_path / "wide.tif")


# ---------------------------------------------------------------------------------------------- 6: vocabularies
@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(128, 256)) * 4, r"vocab\.txt is not UTF-8 text"),
        (b"", r"vocab\.txt is empty"),
        (b"\n\n", r"vocab\.txt is empty"),
        (b"[PAD]\n[UNK]\nchest\nlung\n", r"vocab\.txt lacks the special token\(s\) \['\[CLS\]', '\[SEP\]'\]"),
    ],
)
def test_a_vocabulary_that_is_none_is_refused_up_front(tmp_path, capsys, no_training, content, message):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_bytes(content)
    assert run(tmp_path, {**TINY, "model": {"tokenizer": str(tmp_path / "tok")}}) == 2
    assert re.search(r"config\.model\.tokenizer: .*" + message, error_of(capsys))


# ---------------------------------------------------------------------------------------------- 10: DICOM VOI
def _dicom(tmp_path, name: str, **elements):
    """A 12-bit MONOCHROME2 DICOM file of four pixel values with extra ``elements`` set through pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from test_adapters import write_dicom

    path = write_dicom(tmp_path / f"{name}.dcm", np.array([[0, 1000], [2000, 4000]], dtype=np.uint16))
    ds = pydicom.dcmread(path)
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset

    from artmed.data.dicom import read_dicom

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    lut = np.array([(4095 - x) // 16 for x in range(4096)], dtype=np.uint16)  # decreasing: min-max keeps the order
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    got = read_dicom(_dicom(tmp_path, "lut", VOILUTSequence=[item]))
    expected = np.array([[4095 // 16, 3095 // 16], [2095 // 16, 95 // 16]]) / 255
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_dicom_sigmoid_voi_lut_function_is_applied(tmp_path):
    from artmed.data.dicom import read_dicom

    got = read_dicom(_dicom(tmp_path, "sigmoid", WindowCenter="2000", WindowWidth="1000", VOILUTFunction="SIGMOID"))
    x = np.array([[0, 1000], [2000, 4000]], dtype=np.float64)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-4 * (x - 2000) / 1000)), atol=1e-6)
    assert got[0, 1] > 0.01  # a linear window would clip it to 0
