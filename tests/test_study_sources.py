"""The paper's setting from one study config: a MIMIC-CXR-JPG tree, RSNA (DICOM) and COVID (PNG) folders and a
released-layout checkpoint written here from phantoms, run through ``artmed run --config``; bad paths, layouts and
checkpoints refused before any work, naming the field."""

import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import FileImageSet
from artmed.data.phantom import PhantomGenerator, sample_labels
from artmed.data.tasks import CHEXPERT5_CLASSES, task_prompts
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations import harness as harness_module
from artmed.evaluations.cli import main
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.report import read_table
from artmed.evaluations.sources import load_study_data
from artmed.models import save_medclip, save_tokenizer
from test_adapters import label_row, write_csv, write_dicom

SIZE = 32
N_TRAIN_STUDIES = 10
REPORT = "FINDINGS: {finding}. No pneumothorax.\nIMPRESSION: Stable chest {n}."
FINDINGS = ["Mild cardiomegaly", "Small left pleural effusion", "Clear lungs", "Bibasilar atelectasis"]

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*label group:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*as their only finding:UserWarning"),
]


def phantoms(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N, H, W) 8-bit phantom radiographs drawn from ``labels``."""
    return (PhantomGenerator(48, seed).generate(labels)[:, 0] * 255).round().astype(np.uint8)


def save(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def one_hot(*names: str) -> np.ndarray:
    row = np.zeros((1, len(CHEXPERT_LABELS)), dtype=np.float32)
    row[0, [CHEXPERT_LABELS.index(n) for n in names]] = 1
    return row


def write_mimic(root) -> None:
    """Train studies with reports; test studies: two exclusive positives per 5x200 class and one with two findings."""
    train = sample_labels(N_TRAIN_STUDIES, 3)
    test = np.concatenate([one_hot(c) for c in CHEXPERT5_CLASSES for _ in range(2)] + [one_hot("Edema", "Pneumonia")])
    rows, split, meta = [], [], []
    for k, (labels, name) in enumerate([(train, "train"), (test, "test")]):
        for i, (y, pixels) in enumerate(zip(labels, phantoms(labels, k))):
            subject, study, dicom = f"1{k}{i:06d}", f"5{k}{i:06d}", f"d{k}-{i}"
            save(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg", pixels)
            rows.append([subject, study, *label_row(**{CHEXPERT_LABELS[j]: f"{y[j]:.1f}" for j in np.flatnonzero(y)})])
            split.append([dicom, study, subject, name])
            meta.append([dicom, subject, study, "PA"])
            if name == "train":
                report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
                report.write_text(REPORT.format(finding=FINDINGS[i % len(FINDINGS)], n=i))
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_LABELS], rows, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"], meta)


def write_rsna(root) -> None:
    """Kaggle's layout: stage_2_train_labels.csv (a pneumonia patient with two boxes) and DICOM images."""
    labels = np.concatenate([one_hot("No Finding")] * 3 + [one_hot("Pneumonia")] * 3)
    rows = []
    for i, pixels in enumerate(phantoms(labels, 7)):
        write_dicom(root / "stage_2_train_images" / f"pat{i}.dcm", pixels.astype(np.uint16) * 16)
        target = int(labels[i, CHEXPERT_LABELS.index("Pneumonia")])
        rows += [[f"pat{i}", *(["1", "2", "3", "4"] if target else [""] * 4), target]] * (1 + (i == 5))
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)


def write_covid(root) -> None:
    """The COVID-19 Radiography Database's layout: class folders with an images/ folder each."""
    for folder, finding in (("Normal", "No Finding"), ("COVID", "Pneumonia")):
        for i, pixels in enumerate(phantoms(np.concatenate([one_hot(finding)] * 3), 11)):
            save(root / folder / "images" / f"{folder}-{i}.png", pixels)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The on-disk datasets and a released-layout tiny checkpoint (model.safetensors + vocab.txt)."""
    root = tmp_path_factory.mktemp("layouts")
    write_mimic(root / "mimic")
    write_rsna(root / "rsna")
    write_covid(root / "covid")
    estimator = MedCLIPEstimator.tiny(task_prompts("rsna_like"), image_size=SIZE, seed=5)
    save_medclip(estimator.model, root / "ckpt")
    save_tokenizer(estimator.tokenizer, root / "ckpt")
    return root


def study(layouts, out, **changes) -> dict:
    """The YAML config of the test study (the issue's example at 32 px, 2 training steps), with ``changes``."""
    config = {
        "output_dir": str(out),
        "model": {"variant": "tiny", "checkpoint": str(layouts / "ckpt"), "image_size": SIZE},
        "data": {"source": "mimic_cxr", "root": str(layouts / "mimic"), "n_train": 6, "n_shadow": 3, "n_test": 8},
        "tasks": [
            {"name": "rsna", "source": "rsna", "root": str(layouts / "rsna")},
            {"name": "covid", "source": "covid", "root": str(layouts / "covid")},
            {"name": "mimic_5x200", "source": "mimic_cxr"},
        ],
        "pretrain": {"steps": 2, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4},
        "attacks": [
            {"attack": "clean"},
            {"attack": "badmatch", "percent_poison": 0.2},
            {"attack": "baddist_badmatch", "percent_poison": 0.2, "baddist_params": {"steps": 2, "batch_size": 2}},
        ],
        "defenses": [
            {"name": "spectral_signatures", "retrain": True},
            {"name": "strip", "params": {"n_superimpose": 2, "verbose": False}, "attacks": ["badmatch"]},
            {"name": "fine_pruning", "params": {"finetune_steps": 2, "batch_size": 2}, "attacks": ["badmatch"]},
            {"name": "cleanclip", "params": {"steps": 2, "batch_size": 2, "verbose": False}, "attacks": ["badmatch"]},
        ],
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return config


def write_yaml(tmp_path, config: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------------------------- the data
def test_real_data_is_lazy_split_and_held_out(layouts, tmp_path):
    config = StudyConfig.from_dict(study(layouts, tmp_path / "out"))
    data = load_study_data(config, seed=0)
    assert isinstance(data.x_train, FileImageSet) and isinstance(data.x_shadow, FileImageSet)
    assert (len(data.x_train), len(data.x_shadow)) == (6, 3)
    assert not set(data.x_train.paths) & set(data.x_shadow.paths)
    assert all(p.parent.name.startswith("s50") for p in data.x_train.paths + data.x_shadow.paths)  # train split only
    np.testing.assert_array_equal(data.y_train, data.x_train.labels)
    assert data.x_train.get_batch([0]).shape == (1, 1, SIZE, SIZE)
    np.testing.assert_array_equal(data.x_train[np.array([2, 0])], data.x_train.get_batch([2, 0]))  # numpy indexing
    assert list(data.tasks) == ["rsna", "covid", "mimic_5x200"] and config.task == "rsna"
    rsna, covid, five = data.tasks.values()
    assert rsna.class_names == ["Normal", "Pneumonia"] and rsna.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert covid.class_names == ["Normal", "COVID"] and sorted(covid.targets.tolist()) == [0, 0, 0, 1, 1, 1]
    assert five.class_names == list(CHEXPERT5_CLASSES) and len(five.images) == 8  # 10 exclusive positives, capped
    labels = five.images.labels
    assert (labels[np.arange(8), [CHEXPERT_LABELS.index(CHEXPERT5_CLASSES[t]) for t in five.targets]] == 1).all()
    assert (labels.sum(axis=1) == 1).all()  # the test study with two findings is never drawn
    studies = sorted(int(p.parent.name[3:]) for p in data.x_train.paths)  # text pool: the training studies' reports
    assert sorted(int(s.rsplit(" ", 1)[1]) for s in data.texts.sentences if s.startswith("Stable chest")) == studies
    assert StudyConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    again = load_study_data(config, seed=0)
    assert again.x_train.paths == data.x_train.paths and again.texts.sentences == data.texts.sentences
    assert load_study_data(config, seed=1).x_train.paths != data.x_train.paths
    phantom = StudyConfig.from_dict(
        {
            "data": {"n_train": 8, "n_shadow": 2, "n_test": 5, "image_size": SIZE},
            "tasks": [{"name": "covid", "source": "covid", "root": str(layouts / "covid")}],
        }
    )
    mixed = load_study_data(phantom, seed=0)  # phantom training data, a real task
    assert isinstance(mixed.x_train, np.ndarray) and mixed.x_train.shape == (8, 1, SIZE, SIZE)
    assert list(mixed.tasks) == ["covid"] and len(mixed.tasks["covid"].images) == 5 and phantom.task == "covid"


@pytest.fixture(scope="module")
def csv_layouts(tmp_path_factory):
    """CheXpert (train.csv; two exclusive positives per 5x200 class, a lateral one, six others) and MedCLIP's
    local_data CSVs over the same images, with MedCLIP's sentence-label.csv."""
    root = tmp_path_factory.mktemp("csv")
    five = [one_hot(c) for c in CHEXPERT5_CLASSES for _ in range(2)]
    others = [
        ("No Finding",),
        ("Pneumonia",),
        ("Edema", "Pleural Effusion"),
        ("Cardiomegaly", "Support Devices"),
        ("Lung Opacity",),
        ("Atelectasis", "Fracture"),
    ]
    labels = np.concatenate([*five, one_hot("Edema"), *(one_hot(*names) for names in others)])
    frontal = ["Frontal"] * 10 + ["Lateral"] + ["Frontal"] * 6
    rows, metas = [], []
    for i, (y, pixels) in enumerate(zip(labels, phantoms(labels, 2))):
        path = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1.jpg"
        save(root / path, pixels)
        cells = label_row(**{CHEXPERT_LABELS[j]: f"{y[j]:.1f}" for j in np.flatnonzero(y)})
        rows.append([path, frontal[i], *cells])
        metas.append([path, *cells])
    write_csv(root / "CheXpert-v1.0-small" / "train.csv", ["Path", "Frontal/Lateral", *CHEXPERT_LABELS], rows)
    local = root / "local_data"
    write_csv(local / "chexpert-train-meta.csv", ["imgpath", *CHEXPERT_LABELS], metas[10:])
    write_csv(local / "mimic-cxr-train-meta.csv", ["imgpath", *CHEXPERT_LABELS], metas[:2])
    write_csv(local / "chexpert-5x200-meta.csv", ["imgpath", *CHEXPERT_LABELS], metas[:10])
    write_csv(
        local / "covid-test-meta.csv",
        ["imgpath", "Normal", "COVID"],
        [[m[0], i % 2, 1 - i % 2] for i, m in enumerate(metas[:4])],
    )
    write_csv(
        local / "rsna-balanced-test-meta.csv",
        ["imgpath", "Normal", "Pneumonia"],
        [[m[0], 1 - i % 2, i % 2] for i, m in enumerate(metas[:4])],
    )
    write_csv(
        local / "sentence-label.csv",
        ["Reports", *CHEXPERT_LABELS],
        [["no pleural effusion", *label_row(**{"No Finding": "1"})], ["mild edema", *label_row(Edema="1")]],
    )
    return root


def test_chexpert_training_images_exclude_its_5x200(csv_layouts, tmp_path):
    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "model": {"image_size": SIZE},
            "data": {
                "source": "chexpert",
                "root": str(csv_layouts / "CheXpert-v1.0-small"),
                "n_shadow": 2,
                "reports_root": str(csv_layouts / "local_data" / "sentence-label.csv"),
            },
            "tasks": [{"name": "chexpert_5x200", "source": "chexpert"}],
        }
    )
    config.check_runnable()
    data = load_study_data(config, seed=0)
    five = data.tasks["chexpert_5x200"]
    assert len(five.images) == 10 and np.bincount(five.targets).tolist() == [2] * 5
    assert (len(data.x_train), len(data.x_shadow)) == (5, 2)  # the 17 images less the 10 tested
    assert data.texts.sentences == ["no pleural effusion", "mild edema"]


def test_medclip_csvs_as_data_and_tasks(csv_layouts, tmp_path):
    local = csv_layouts / "local_data"
    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "model": {"image_size": SIZE},
            "data": {"source": "medclip_csv", "root": str(local), "image_root": str(csv_layouts), "n_shadow": 2},
            "tasks": [
                {
                    "name": "covid",
                    "source": "covid",
                    "root": str(local / "covid-test-meta.csv"),
                    "image_root": str(csv_layouts),
                },
                {
                    "name": "rsna",
                    "source": "rsna",
                    "root": str(local / "rsna-balanced-test-meta.csv"),
                    "image_root": str(csv_layouts),
                },
                {
                    "name": "chexpert_5x200",
                    "source": "chexpert",
                    "root": str(local / "chexpert-5x200-meta.csv"),
                    "image_root": str(csv_layouts),
                },
            ],
        }
    )
    config.check_runnable()
    data = load_study_data(config, seed=0)
    assert data.tasks["covid"].targets.tolist() == [1, 0, 1, 0] and data.tasks["rsna"].targets.tolist() == [0, 1, 0, 1]
    assert np.bincount(data.tasks["chexpert_5x200"].targets).tolist() == [2] * 5
    assert len(data.x_train) + len(data.x_shadow) == 9 - 2  # both train metas, less the images the tasks test on
    assert data.texts.sentences == ["no pleural effusion", "mild edema"]


# ---------------------------------------------------------------------------------------------- end to end
def test_artmed_run_on_real_layouts_and_a_released_checkpoint(layouts, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--config", str(write_yaml(tmp_path, study(layouts, out))), "--quiet"]) == 0, (
        capsys.readouterr().err
    )
    models = read_table(out / "models.csv")
    assert [m["attack"] for m in models] == ["clean", "badmatch", "baddist_badmatch"]
    assert [m["status"] for m in models] == ["ok"] * 3 and [int(m["n_poison"]) for m in models] == [0, 1, 1]
    assert all(np.isfinite(float(m["ca"])) and np.isfinite(float(m["asr"])) for m in models[1:])
    for record in read_table(out / "models.json"):  # every task scored; the first is the headline
        assert all(np.isfinite(record[f"tasks.{name}.ca"]) for name in ("rsna", "covid", "mimic_5x200"))
        assert record["ca"] == record["tasks.rsna.ca"]
    defenses = read_table(out / "defenses.json")  # on lazy training and clean ImageSets
    assert [(d["defense"], d["status"]) for d in defenses if d["status"] != "ok"] == []
    assert sorted(d["defense"] for d in defenses if d["attack"] == "badmatch") == [
        "cleanclip",
        "fine_pruning",
        "spectral_signatures",
        "strip",
    ]
    assert all(np.isfinite(d["ca_after"]) for d in defenses if d["defense"] != "strip")
    assert not (out / "models" / "base-s0").exists()  # released weights are the base model: no pretraining


def test_tiny_model_from_scratch_is_pretrained_on_the_real_images(layouts, tmp_path, capsys):
    out = tmp_path / "out"
    config = study(
        layouts, out, attacks=[{"attack": "clean"}], defenses=[], model={"variant": "tiny", "image_size": SIZE}
    )
    assert main(["run", "--config", str(write_yaml(tmp_path, config)), "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "models" / "base-s0").is_dir()
    (model,) = read_table(out / "models.csv")
    assert model["status"] == "ok" and np.isfinite(float(model["ca"]))


# ---------------------------------------------------------------------------------------------- refused up front
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the study reads its data or trains."""
    monkeypatch.setattr(harness_module, "load_study_data", lambda *a, **k: pytest.fail("the study started"))
    monkeypatch.setattr(MedCLIPEstimator, "fit", lambda *a, **k: pytest.fail("a model was trained"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.root": "{tmp}/nowhere"}, r"config\.data\.root: .*nowhere does not exist"),
        (
            {"data.root": "{layouts}/rsna"},
            r"config\.data\.root: .*rsna does not look like MIMIC-CXR-JPG: .*found neither "
            r"mimic-cxr-2\.0\.0-split\.csv",
        ),
        (
            {"data.reports_root": "{layouts}/covid"},
            r"config\.data\.reports_root: .*covid does not look like MIMIC-CXR's "
            r"reports",
        ),
        (
            {"tasks": [{"name": "rsna", "source": "rsna", "root": "{layouts}/covid"}]},
            r"config\.tasks\[0\]\.root: .*covid does not look like RSNA Pneumonia: it has no stage_2_train_labels\.csv",
        ),
        (
            {"tasks": [{"name": "covid", "source": "covid", "root": "{layouts}/rsna"}]},
            r"config\.tasks\[0\]\.root: .*rsna does not look like a COVID-19 class-folder tree: "
            r"no folder for class\(es\) \['Normal', 'COVID'\]",
        ),
        (
            {"tasks": [{"name": "covid", "source": "covid", "root": "{layouts}/covid", "image_root": "{tmp}/nowhere"}]},
            r"config\.tasks\[0\]\.image_root: .*nowhere is not a folder",
        ),
        (
            {"model.checkpoint": "{tmp}/nowhere"},
            r"config\.model\.checkpoint: checkpoint path .*nowhere' does not exist",
        ),
        (
            {"model.variant": "resnet50"},
            r"config\.model\.checkpoint: .*ckpt does not fit the MedCLIPModel:\n  missing keys",
        ),
        (
            {"model.checkpoint": "{layouts}/ckpt/model.safetensors", "model.tokenizer": "{layouts}/rsna"},
            r"config\.model\.tokenizer: tokenizer directory .*rsna' holds no vocab\.txt",
        ),
    ],
)
def test_bad_paths_layouts_and_checkpoints_name_the_field_before_any_work(
    layouts, tmp_path, capsys, no_work, changes, message
):
    text = json.dumps(study(layouts, tmp_path / "out", **changes))
    config = json.loads(text.replace("{tmp}", str(tmp_path)).replace("{layouts}", str(layouts)))
    assert main(["run", "--config", str(write_yaml(tmp_path, config)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("artmed run: error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_checkpoint_folder_without_a_tokenizer_is_refused(layouts, tmp_path, no_work):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes((layouts / "ckpt" / "model.safetensors").read_bytes())
    config = StudyConfig.from_dict(study(layouts, tmp_path / "out", **{"model.checkpoint": str(weights)}))
    with pytest.raises(
        ValueError,
        match=r"^config\.model\.tokenizer: none given and the checkpoint's folder .*weights "
        r"holds no vocab\.txt",
    ):
        config.check_runnable()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data.source": "imagenet"}, r"^config\.data\.source: unknown data source 'imagenet'; valid: \['phantom', "),
        ({"data": {"source": "mimic_cxr"}}, r"^config\.data\.root: the mimic_cxr source needs the folder of its data$"),
        ({"data": {"root": "/data"}}, r"^config\.data\.root: the phantom source reads no files"),
        ({"data": {"source": "chexpert", "root": "/data"}}, r"^config\.data\.reports_root: CheXpert ships no reports"),
        ({"tasks": []}, r"^config\.tasks: the mimic_cxr source needs at least one zero-shot task"),
        ({"tasks": [{"name": "rsna", "source": "rsna"}]}, r"^config\.tasks\[0\]\.root: the rsna task needs the folder"),
        (
            {"tasks": [{"name": "x", "source": "chexpert"}]},
            r"^config\.tasks\[0\]\.root: the chexpert task needs the folder",
        ),
        ({"tasks": [{"name": "x", "source": "nih"}]}, r"^config\.tasks\[0\]\.source: unknown task source 'nih'"),
        (
            {"tasks": [{"name": "x", "source": "covid", "root": "/c"}] * 2},
            r"^config\.tasks: names listed twice: \['x'\]",
        ),
        (
            {"task": "covid_like"},
            r"^config\.task: unknown task 'covid_like'; available: \['rsna', 'covid', 'mimic_5x200'",
        ),
        ({"model": {"variant": "vit"}}, r"^config\.model\.variant: unknown model variant 'vit'"),
        ({"model": {"variant": "resnet50"}}, r"^config\.model\.tokenizer: a resnet50 model trained from scratch needs"),
        ({"model": {"image_size": "abc"}}, r"^config\.model\.image_size must be an integer, got 'abc'$"),
    ],
)
def test_bad_source_settings_name_the_field_when_the_config_is_built(layouts, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_dict(study(layouts, tmp_path / "out", **changes))


def test_the_built_in_study_keeps_its_task_key_and_phantom_settings():
    config = StudyConfig.from_dict({"task": "chexpert5", "data": {"image_size": 32}})
    assert (config.task, config.data.n_train, config.data.n_test, config.model.image_size) == (
        "chexpert5",
        2000,
        200,
        32,
    )
    assert StudyConfig().task == "rsna_like" and StudyConfig().tasks == []
    with pytest.raises(ValueError, match=r"^config\.model\.image_size \(224\) differs from data\.image_size \(64\)"):
        StudyConfig.from_dict({"model": {"image_size": 224}})
    real = {"data": {"source": "mimic_cxr", "root": "/mimic"}, "tasks": [{"name": "m", "source": "mimic_cxr"}]}
    config = StudyConfig.from_dict(real)  # MedCLIP's side by default; the task reads the data root
    assert (config.data.image_size, config.model.image_size, config.tasks[0].root) == (224, 224, "/mimic")
    with pytest.raises(ValueError, match=r"^config\.model\.image_size \(224\) differs from data\.image_size \(128"):
        StudyConfig.from_dict({**real, "data": {**real["data"], "image_size": 128}, "model": {"image_size": 224}})
    with pytest.raises(ValueError, match=r"^config\.task: unknown task 'rsna'; available: \['rsna_like', "):
        StudyConfig.from_dict({"task": "rsna"})
