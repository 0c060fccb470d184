"""Real-data adapters on tiny fixture files written here: MedCLIP metas, CheXpert, MIMIC, RSNA, COVID, Open-i, DICOM."""

import csv
import gzip
import sys

import numpy as np
import pytest
from PIL import Image

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.adapters import (
    load_chexpert,
    load_covid,
    load_covid_meta,
    load_medclip_dataset,
    load_medclip_images,
    load_mimic,
    load_mimic_images,
    load_mimic_reports,
    load_openi_reports,
    load_reports,
    load_rsna,
    load_rsna_meta,
    load_sentence_labels,
    read_dicom,
)
from artmed.data.dataset import FileImageSet, MedDataset, TextPool, ZeroShotTask

SIZE = 16


def write_png(path, value=128, shape=(12, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)
    return path


def write_csv(path, header, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def label_row(**values):
    return [values.get(name, "") for name in CHEXPERT_LABELS]


# ----- MedCLIP meta files -----


@pytest.fixture
def medclip_dir(tmp_path):
    write_png(tmp_path / "img" / "a.png", 200)
    write_png(tmp_path / "img" / "b.png", 50, shape=(20, 12))
    write_csv(
        tmp_path / "train-meta.csv",
        ["imgpath", *CHEXPERT_LABELS, "report"],
        [
            ["img/a.png", *label_row(**{"Cardiomegaly": "1.0", "Edema": "-1.0"}), "Big heart."],
            ["img/b.png", *label_row(**{"No Finding": "1"}), "Normal."],
        ],
    )
    write_csv(
        tmp_path / "sentence-label.csv",
        ["Reports", *CHEXPERT_LABELS],
        [
            ["no pleural effusion", *label_row(**{"No Finding": "1", "Pleural Effusion": "0"})],
            ["", *label_row()],
            ["possible pneumonia", *label_row(Pneumonia="-1")],
        ],
    )
    write_csv(
        tmp_path / "covid-test-meta.csv", ["imgpath", "Normal", "COVID"], [["img/a.png", 0, 1], ["img/b.png", 1, 0]]
    )
    write_csv(
        tmp_path / "rsna-test-meta.csv",
        ["imgpath", "Normal", "Pneumonia"],
        [["img/a.png", "1", "0"], ["img/b.png", "0", "1"]],
    )
    return tmp_path


def test_medclip_meta_images_are_lazy_and_labelled(medclip_dir):
    images = load_medclip_images(medclip_dir / "train-meta.csv", image_size=SIZE)
    assert isinstance(images, FileImageSet) and len(images) == 2
    labels = images.labels
    assert labels.dtype == np.float32 and labels.shape == (2, NUM_LABELS)
    assert labels[0, CHEXPERT_LABELS.index("Cardiomegaly")] == 1 and labels[0, CHEXPERT_LABELS.index("Edema")] == -1
    assert labels[1, 0] == 1 and labels[1, 1:].sum() == 0
    batch = images.get_batch([0, 1])
    assert batch.shape == (2, 1, SIZE, SIZE) and batch.dtype == np.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    assert batch[0, 0, SIZE // 2, SIZE // 2] == pytest.approx(200 / 255, abs=0.02)
    assert batch[0, 0, 0, 0] == 0.0  # wide image padded to a square with zeros
    zeros = load_medclip_images(medclip_dir / "train-meta.csv", image_size=SIZE, uncertain="zeros").labels
    ones = load_medclip_images(medclip_dir / "train-meta.csv", image_size=SIZE, uncertain="ones").labels
    assert zeros[0, CHEXPERT_LABELS.index("Edema")] == 0 and ones[0, CHEXPERT_LABELS.index("Edema")] == 1
    with pytest.raises(ValueError, match="uncertain must be one of"):
        load_medclip_images(medclip_dir / "train-meta.csv", uncertain="maybe")


def test_medclip_sentences_tasks_and_dataset(medclip_dir):
    pool = load_sentence_labels(medclip_dir / "sentence-label.csv")
    assert isinstance(pool, TextPool) and pool.sentences == ["no pleural effusion", "possible pneumonia"]
    assert pool.labels[1, CHEXPERT_LABELS.index("Pneumonia")] == -1
    covid = load_covid_meta(medclip_dir / "covid-test-meta.csv", image_size=SIZE)
    assert isinstance(covid, ZeroShotTask) and covid.class_names == ["Normal", "COVID"]
    assert covid.targets.tolist() == [1, 0] and set(covid.prompts) == {"Normal", "COVID"}
    assert covid.images.labels[1, 0] == 1 and covid.images.labels[0, CHEXPERT_LABELS.index("Pneumonia")] == 1
    rsna = load_rsna_meta(medclip_dir / "rsna-test-meta.csv", prompts={"Normal": ["clear"], "Pneumonia": ["pna"]})
    assert rsna.targets.tolist() == [0, 1] and rsna.prompts["Pneumonia"] == ["pna"]
    data = load_medclip_dataset(
        medclip_dir / "train-meta.csv",
        medclip_dir / "sentence-label.csv",
        covid_meta=medclip_dir / "covid-test-meta.csv",
        rsna_meta=medclip_dir / "rsna-test-meta.csv",
        image_size=SIZE,
        check_files=True,
    )
    assert isinstance(data, MedDataset) and sorted(data.tasks) == ["covid", "rsna"]
    assert data.tasks["rsna"].images.get_batch([0]).shape == (1, 1, SIZE, SIZE)


def test_bad_label_value_names_file_row_and_column(tmp_path):
    path = write_csv(
        tmp_path / "meta.csv",
        ["imgpath", *CHEXPERT_LABELS],
        [
            ["a.png", *label_row(Edema="1")],
            ["b.png", *label_row(Edema="2")],
        ],
    )
    with pytest.raises(ValueError, match=r"meta\.csv: data row 2, column 'Edema': label value '2'"):
        load_medclip_images(path)


def test_missing_label_column_names_file_and_columns(tmp_path):
    path = write_csv(tmp_path / "meta.csv", ["imgpath", *CHEXPERT_LABELS[:-2]], [["a.png", *[""] * 12]])
    with pytest.raises(ValueError, match=r"meta\.csv.*lacks column\(s\) \['Fracture', 'Support Devices'\]"):
        load_medclip_images(path)


def test_bad_one_hot_row_is_reported(tmp_path):
    path = write_csv(tmp_path / "covid.csv", ["imgpath", "Normal", "COVID"], [["a.png", 1, 0], ["b.png", 1, 1]])
    with pytest.raises(ValueError, match=r"covid\.csv: data row 2"):
        load_covid_meta(path)


LABELS = ",".join(CHEXPERT_LABELS)
ZEROS = ",".join(["0"] * NUM_LABELS)


@pytest.mark.parametrize(
    ("name", "text", "load", "message"),
    [
        (
            "train-meta.csv",
            f"imgpath,{LABELS}\na.png,{ZEROS}\n\nb.png,1,0,0\n",
            load_medclip_images,
            r"train-meta\.csv: line 4 \(data row 2\) has fewer fields than the header; missing column\(s\) "
            r"\['Lung Lesion', .*'Support Devices'\]",
        ),
        (
            "train-meta.csv",
            f'imgpath,{LABELS},report\na.png,{ZEROS},"Big\nheart."\nb.png,{ZEROS}\n',
            load_medclip_images,
            r"train-meta\.csv: line 4 \(data row 2\) has fewer fields than the header; "
            r"missing column\(s\) \['report'\]",
        ),
        (
            "sentence-label.csv",
            f"Reports,{LABELS}\nno effusion,{ZEROS}\nsmall effusion, no edema,{ZEROS}\n",
            load_sentence_labels,
            r"sentence-label\.csv: line 3 \(data row 2\) has 1 field\(s\) more than the header's 15: "
            r"\['0'\] \(a value with a comma must be quoted\)",
        ),
        (
            "covid-test-meta.csv",
            "imgpath,Normal,COVID\na.png,1\n",
            load_covid_meta,
            r"covid-test-meta\.csv: line 2 \(data row 1\) has fewer fields .*\['COVID'\]",
        ),
    ],
    ids=["short-train-row", "short-row-after-multiline-cell", "extra-sentence-field", "short-covid-row"],
)
def test_medclip_rows_with_too_few_or_too_many_fields_are_refused(tmp_path, name, text, load, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load(tmp_path / name)


def test_missing_and_corrupt_images_name_the_file(medclip_dir):
    write_csv(medclip_dir / "gone.csv", ["imgpath", *CHEXPERT_LABELS], [["img/nothere.png", *label_row()]])
    with pytest.raises(ValueError, match="nothere.png"):
        load_medclip_images(medclip_dir / "gone.csv", check_files=True)
    lazy = load_medclip_images(medclip_dir / "gone.csv")
    with pytest.raises(ValueError, match="nothere.png"):
        lazy.get_batch([0])
    (medclip_dir / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    write_csv(medclip_dir / "broken.csv", ["imgpath", *CHEXPERT_LABELS], [["img/broken.png", *label_row()]])
    with pytest.raises(ValueError, match="broken.png"):
        load_medclip_images(medclip_dir / "broken.csv").get_batch([0])


# ----- CheXpert -----


def test_chexpert_paths_blanks_uncertainty_and_frontal_filter(tmp_path):
    root = tmp_path / "data"
    ds = root / "CheXpert-v1.0-small"
    write_png(ds / "train" / "patient1" / "study1" / "view1_frontal.jpg".replace(".jpg", ".png"), 100)
    write_png(ds / "train" / "patient1" / "study1" / "view2_lateral.png", 30)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
    write_csv(
        ds / "train.csv",
        header,
        [
            [
                "CheXpert-v1.0-small/train/patient1/study1/view1_frontal.png",
                "Male",
                "60",
                "Frontal",
                "PA",
                *label_row(**{"Pleural Effusion": "-1.0", "Support Devices": "1.0"}),
            ],
            [
                "CheXpert-v1.0-small/train/patient1/study1/view2_lateral.png",
                "Male",
                "60",
                "Lateral",
                "",
                *label_row(**{"No Finding": "1.0"}),
            ],
        ],
    )
    images = load_chexpert(ds / "train.csv", image_size=SIZE, check_files=True)
    assert len(images) == 2
    eff = CHEXPERT_LABELS.index("Pleural Effusion")
    assert images.labels[0, eff] == -1 and images.labels[0, -1] == 1 and images.labels[0, 0] == 0
    assert images.get_batch([1]).shape == (1, 1, SIZE, SIZE)
    frontal = load_chexpert(ds / "train.csv", root=root, image_size=SIZE, uncertain="ones", frontal_only=True)
    assert len(frontal) == 1 and frontal.labels[0, eff] == 1


# ----- MIMIC-CXR-JPG -----


def test_mimic_split_views_labels_and_reports(tmp_path):
    root = tmp_path / "mimic"
    study_dir = root / "files" / "p10" / "p10000032"
    write_png(study_dir / "s50000001" / "d1.jpg", 90)
    write_png(study_dir / "s50000001" / "d2.jpg", 90)
    write_png(study_dir / "s50000002" / "d3.jpg", 90)
    write_png(root / "files" / "p11" / "p11000001" / "s50000003" / "d4.jpg", 90)
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv.gz",
        ["dicom_id", "study_id", "subject_id", "split"],
        [
            ["d1", "50000001", "10000032", "train"],
            ["d2", "50000001", "10000032", "train"],
            ["d3", "50000002", "10000032", "train"],
            ["d4", "50000003", "11000001", "test"],
        ],
        gz=True,
    )
    write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv.gz",
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        [
            ["10000032", "50000001", *label_row(Atelectasis="1.0", Edema="-1.0")],
            ["11000001", "50000003", *label_row(**{"No Finding": "1.0"})],
        ],
        gz=True,
    )
    write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        [
            ["d1", "10000032", "50000001", "PA"],
            ["d2", "10000032", "50000001", "LATERAL"],
            ["d3", "10000032", "50000002", "AP"],
            ["d4", "11000001", "50000003", "AP"],
        ],
    )
    (study_dir / "s50000001.txt").write_text(
        "INDICATION: eval for pneumonia.\nFINDINGS: Left basal atelectasis. Mild pulmonary vascular congestion.\n"
        "IMPRESSION: Atelectasis."
    )
    train = load_mimic_images(root, image_size=SIZE, check_files=True)
    assert [p.name for p in train.paths] == ["d1.jpg", "d2.jpg"]  # d3's study has no label row
    assert train.labels[0, CHEXPERT_LABELS.index("Atelectasis")] == 1
    assert train.labels[1, CHEXPERT_LABELS.index("Edema")] == -1
    frontal = load_mimic_images(root, views=("PA", "AP"), image_size=SIZE, uncertain="zeros")
    assert [p.name for p in frontal.paths] == ["d1.jpg"] and frontal.labels.min() == 0
    assert load_mimic_images(root, split="test", image_size=SIZE).labels[0, 0] == 1
    data = load_mimic(root, image_size=SIZE)
    assert isinstance(data, MedDataset)
    assert data.texts.sentences == ["Left basal atelectasis", "Mild pulmonary vascular congestion", "Atelectasis"]
    assert data.texts.labels[1, CHEXPERT_LABELS.index("Edema")] == -1
    with pytest.raises(ValueError, match="none of the 1 report files"):
        load_mimic(root, split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        load_mimic_images(root, split="val")


# ----- RSNA and COVID-19 -----


def test_rsna_targets_per_patient_and_suffix_detection(tmp_path):
    images = tmp_path / "stage_2_train_images"
    write_png(images / "pat-a.png", 10)
    write_png(images / "pat-b.png", 240)
    csv_path = write_csv(
        tmp_path / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            ["pat-a", "", "", "", "", "0"],
            ["pat-b", "1", "2", "3", "4", "1"],
            ["pat-b", "5", "6", "7", "8", "1"],
        ],
    )
    task = load_rsna(csv_path, image_size=SIZE, check_files=True)
    assert task.name == "rsna" and task.class_names == ["Normal", "Pneumonia"]
    assert task.targets.tolist() == [0, 1] and task.images.paths[1].name == "pat-b.png"
    assert task.images.get_batch([1]).mean() > task.images.get_batch([0]).mean()
    write_csv(tmp_path / "bad.csv", ["patientId", "Target"], [["pat-a", "0"], ["pat-b", "yes"]])
    with pytest.raises(ValueError, match=r"bad\.csv: data row 2, column 'Target'"):
        load_rsna(tmp_path / "bad.csv", image_dir=images)
    with pytest.raises(ValueError, match="cannot find the image of patient 'pat-a'"):
        load_rsna(csv_path, image_dir=tmp_path)


def test_covid_folders_and_csvs(tmp_path):
    write_png(tmp_path / "db" / "Normal" / "images" / "n1.png", 20)
    write_png(tmp_path / "db" / "Normal" / "masks" / "n1.png", 255)
    write_png(tmp_path / "db" / "COVID" / "images" / "c1.png", 200)
    write_png(tmp_path / "db" / "COVID" / "images" / "c2.jpg", 210)
    write_png(tmp_path / "db" / "Viral Pneumonia" / "v1.png", 150)
    task = load_covid(tmp_path / "db", image_size=SIZE, check_files=True)
    assert [p.name for p in task.images.paths] == ["n1.png", "c1.png", "c2.jpg"]
    assert task.targets.tolist() == [0, 1, 1] and task.name == "covid"

    csv_path = write_csv(
        tmp_path / "list.csv",
        ["filename", "Label"],
        [["db/Normal/images/n1.png", "normal"], ["db/COVID/images/c1.png", "COVID-19"]],
    )
    assert load_covid(csv_path, image_size=SIZE).targets.tolist() == [0, 1]
    onehot = write_csv(tmp_path / "onehot.csv", ["path", "Normal", "COVID"], [["db/COVID/images/c2.jpg", "0", "1"]])
    assert load_covid(onehot, image_size=SIZE).targets.tolist() == [1]
    write_csv(tmp_path / "bad.csv", ["filename", "label"], [["x.png", "normal"], ["y.png", "flu"]])
    with pytest.raises(ValueError, match=r"bad\.csv: data row 2, column 'label': class 'flu'"):
        load_covid(tmp_path / "bad.csv")
    write_png(tmp_path / "empty" / "normal" / "n.png")
    with pytest.raises(ValueError, match="no folder for class 'COVID'"):
        load_covid(tmp_path / "empty")


# ----- DICOM -----


def write_dicom(path, pixels, photometric="MONOCHROME2", slope=None, intercept=None, window=None):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = str(window[0]), str(window[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def test_dicom_monochrome_rescale_and_window(tmp_path):
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels))
    assert mono2.dtype == np.float32 and mono2.shape == (2, 2)
    assert mono2[0, 0] == 0.0 and mono2[1, 1] == 1.0 and mono2[0, 1] == pytest.approx(0.25)
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2)
    # slope 2, intercept -1000 -> values -1000, 1000, 3000, 7000; window centre 1000, width 2001 -> [0, 1] over 0..2000
    windowed = read_dicom(write_dicom(tmp_path / "w.dcm", pixels, slope=2, intercept=-1000, window=(1000, 2001)))
    np.testing.assert_allclose(windowed, [[0.0, 0.5], [1.0, 1.0]], atol=1e-3)


def test_dicom_through_rsna_and_file_image_set(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    images = tmp_path / "imgs"
    write_dicom(images / "p1.dcm", pixels, photometric="MONOCHROME1")
    write_dicom(images / "p2.dcm", pixels)
    csv_path = write_csv(tmp_path / "labels.csv", ["patientId", "Target"], [["p1", "1"], ["p2", "0"]])
    task = load_rsna(csv_path, image_dir=images, image_size=8)
    batch = task.images.get_batch([0, 1])
    assert batch.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(batch[0, 0], 1.0 - batch[1, 0], atol=1e-5)
    (images / "p3.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="p3.dcm"):
        FileImageSet([images / "p3.dcm"], np.zeros((1, NUM_LABELS)), 8).get_batch([0])


def test_dicom_without_pydicom_raises_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'artmed\[dicom\]'"):
        read_dicom(tmp_path / "x.dcm")


# ----- Open-i and report folders -----

OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">Rule out pneumonia.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation></eCitation>
"""


def test_openi_reports_use_findings_and_impression_only(tmp_path):
    (tmp_path / "ecgen" / "sub").mkdir(parents=True)
    (tmp_path / "ecgen" / "1.xml").write_text(
        OPENI_XML.format(findings="The heart is normal in size. No pneumothorax. XXXX.", impression="Normal chest.")
    )
    (tmp_path / "ecgen" / "sub" / "2.xml").write_text(
        OPENI_XML.format(findings="Small right pleural effusion.", impression="")
    )
    pool = load_openi_reports(tmp_path / "ecgen")
    assert pool.sentences == [
        "The heart is normal in size",
        "No pneumothorax",
        "Normal chest",
        "Small right pleural effusion",
    ]
    assert pool.labels[3, CHEXPERT_LABELS.index("Pleural Effusion")] == 1 and pool.labels[0, 0] == 1
    (tmp_path / "ecgen" / "3.xml").write_text("<eCitation><unclosed>")
    with pytest.raises(ValueError, match="3.xml"):
        load_openi_reports(tmp_path / "ecgen")


def test_load_reports_from_folder(tmp_path):
    (tmp_path / "a.txt").write_text("FINDINGS: Mild cardiomegaly. No edema.")
    pool = load_reports(tmp_path)
    assert pool.sentences == ["Mild cardiomegaly", "No edema"]
    assert pool.labels[0, CHEXPERT_LABELS.index("Cardiomegaly")] == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "b.txt").write_text("   ")
    with pytest.raises(ValueError, match="no report sentences"):
        load_reports(tmp_path / "empty")


def test_report_loaders_refuse_files_that_are_not_utf8_text(tmp_path):
    latin1, binary = "No effusion. Caf\u00e9.".encode("latin-1"), b"\x89PNG\r\n\x1a\n\x00\x00"
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "a.txt").write_bytes(latin1)
    with pytest.raises(ValueError, match=r"a\.txt: not UTF-8 text: byte 0xe9 at byte offset 16; convert it to UTF-8"):
        load_reports(tmp_path / "reports")
    (tmp_path / "reports.csv").write_bytes(b"report\n" + binary + b"\n")
    with pytest.raises(ValueError, match=r"reports\.csv: binary file \(NUL byte at byte offset 15\)"):
        load_reports(tmp_path / "reports.csv")
    root = tmp_path / "mimic"
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [["d1", "50000001", "10000032", "train"]],
    )
    report = root / "files" / "p10" / "p10000032" / "s50000001.txt"
    report.parent.mkdir(parents=True)
    for content, message in (
        (latin1, r"not UTF-8 text: byte 0xe9 at byte offset 16"),
        (binary, r"binary file \(NUL byte at byte offset 8\)"),
    ):
        report.write_bytes(content)
        with pytest.raises(ValueError, match=rf"s50000001\.txt: {message}"):
            load_mimic_reports(root)
