"""The released image and text pipeline wired into the study (issue 12): ``data.interpolation`` / ``data.pad`` reach
every image file the study reads, ``data.native_trigger`` pastes the patch on the native image files (BadMatch's
poisoned training images at stage "padded", the triggered test images at stage "raw"), ``train.text_sampling:
own_report`` pairs every training image with a sentence of its own report, on a MIMIC-CXR-JPG tree of non-square
JPEGs and a COVID tree of non-square PNGs larger than the image size; the phantom refuses the file-only options; the
released preset selects them for a real source."""

import numpy as np
import pytest
from PIL import Image

from artmed.attacks.pipeline import AttackSpec, run_attack
from artmed.attacks.poisoning.bad_match import PoisonedImageSet
from artmed.attacks.triggers import PatchTrigger
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import FileImageSet, TextPool
from artmed.data.report_sampling import ReportSampler, split_report_into_segments
from artmed.data.tasks import task_prompts
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations import harness as harness_module
from artmed.evaluations.config import StudyConfig
from artmed.evaluations.harness import Harness, _LazyBase
from artmed.evaluations.sources import load_study_data
from artmed.models import save_medclip, save_tokenizer
from test_study_sources import SIZE, one_hot, phantoms, write_covid, write_mimic

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*label group:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*as their only finding:UserWarning"),
]

PATCH = {"size": 8, "inset": [1, 1]}  # native pixels: 8 px of a 72 px image is ~3.6 px at 32 px


def widen(path, shape) -> None:
    """Rewrite the image file at ``path`` as a non-square (h, w) = ``shape`` image of the same picture."""
    with Image.open(path) as img:
        img.convert("L").resize(shape[::-1], Image.Resampling.BILINEAR).save(path)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """MIMIC-CXR-JPG (72x56 JPEGs, a report per training study) and COVID (60x84 PNGs) trees and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("native")
    write_mimic(root / "mimic")
    write_covid(root / "covid")
    for path in (root / "mimic" / "files").rglob("*.jpg"):
        widen(path, (72, 56))
    for path in (root / "covid").rglob("*.png"):
        widen(path, (60, 84))
    estimator = MedCLIPEstimator.tiny(task_prompts("rsna_like"), image_size=SIZE, seed=5)
    save_medclip(estimator.model, root / "ckpt")
    save_tokenizer(estimator.tokenizer, root / "ckpt")
    return root


def study(layouts, out, data=None, train=None, **changes) -> dict:
    config = {
        "output_dir": str(out),
        "model": {"variant": "tiny", "checkpoint": str(layouts / "ckpt"), "image_size": SIZE},
        "data": {
            "source": "mimic_cxr",
            "root": str(layouts / "mimic"),
            "n_train": 6,
            "n_shadow": 3,
            "n_test": 8,
            **(data or {}),
        },
        "tasks": [
            {"name": "covid", "source": "covid", "root": str(layouts / "covid")},
            {"name": "mimic_5x200", "source": "mimic_cxr"},
        ],
        "pretrain": {"steps": 2, "batch_size": 4},
        "train": {"steps": 2, "batch_size": 4, **(train or {})},
        "attacks": [{"attack": "badmatch", "percent_poison": 0.35, "trigger_params": dict(PATCH)}],
        "defenses": [],
    }
    return {**config, **changes}


NATIVE = {"interpolation": "bilinear", "pad": "no_upscale", "native_trigger": True}


def harness(layouts, tmp_path, **kwargs):
    """A harness on the study and its seed-0 data (what the harness hands that seed's cells)."""
    h = Harness(StudyConfig.from_dict(study(layouts, tmp_path / "out", **kwargs)), verbose=False)
    return h, h.load_data(0)


# ---------------------------------------------------------------------------------------------- image files
def test_interpolation_and_pad_reach_every_image_file(layouts, tmp_path):
    config = StudyConfig.from_dict(
        study(layouts, tmp_path / "out", data={"interpolation": "bilinear", "pad": "no_upscale"})
    )
    data = load_study_data(config, seed=0)
    sets = [data.x_train, data.x_shadow, *data.task_images.values()]
    assert list(data.task_images) == ["covid", "mimic_5x200"]
    assert all(isinstance(s, FileImageSet) and (s.interpolation, s.pad) == ("bilinear", "no_upscale") for s in sets)
    for name, files in data.task_images.items():  # the in-memory test images are read so
        np.testing.assert_array_equal(data.tasks[name].images.to_array(), files.to_array())
    default = load_study_data(StudyConfig.from_dict(study(layouts, tmp_path / "o2")), seed=0)
    assert default.x_train.paths == data.x_train.paths
    assert all(
        (s.interpolation, s.pad) == ("bicubic", "square")
        for s in [default.x_train, default.x_shadow, *default.task_images.values()]
    )
    assert not np.array_equal(default.tasks["covid"].images.to_array(), data.tasks["covid"].images.to_array())
    assert default.reports is None and not default.sentence_table  # nothing read for the pool sampling


def test_native_trigger_poisons_and_triggers_the_native_images(layouts, tmp_path):
    h, run = harness(layouts, tmp_path, data=NATIVE)
    spec = h.config.attacks[0]
    trigger = spec.build_trigger()
    assert trigger.native_size is None
    x, y, mask, _ = h._poisoned(run, spec, None)
    rows = np.flatnonzero(mask)
    assert len(rows) == 2 and isinstance(x, PoisonedImageSet) and x.trigger is None
    native = run.x_train.triggered(PatchTrigger(size=8, inset=(1, 1)), rows, stage="padded")
    np.testing.assert_array_equal(x.get_batch(rows), native.get_batch(rows))
    np.testing.assert_array_equal(x.get_batch(np.flatnonzero(~mask)), run.x_train.get_batch(np.flatnonzero(~mask)))
    clean = run.x_train.get_batch(rows)
    assert not np.allclose(x.get_batch(rows), trigger(clean), atol=1e-3)  # not the patch on the resized array
    assert not np.array_equal(x.get_batch(rows), clean)
    assert (y[rows] == one_hot("No Finding")).all()
    for name, files in run.task_files.items():  # the test set: pasted before the padding
        expected = files.triggered(PatchTrigger(size=8, inset=(1, 1)), stage="raw").to_array()
        x_test = run.tasks[name].images.to_array()
        got = h._triggered(run, name, spec, trigger, x_test)
        np.testing.assert_array_equal(got, expected)
        assert not np.allclose(got, trigger(x_test), atol=1e-3)
        assert h._triggered(run, name, spec, trigger, x_test) is got  # cached per task and trigger
    _, truth = h._context(run, spec, h._base_model(run), None)
    np.testing.assert_array_equal(truth.x_test_triggered, h._triggered(run, "covid", spec, trigger, run.x_test))


def test_native_trigger_reaches_the_scores(layouts, tmp_path, monkeypatch):
    """A whole run: every task is scored on the natively triggered test images."""
    seen = {}
    score = harness_module.score_estimator

    def spy(estimator, x, targets, x_triggered, target):
        seen[len(seen)] = (x, x_triggered)
        return score(estimator, x, targets, x_triggered, target)

    monkeypatch.setattr(harness_module, "score_estimator", spy)
    h = Harness(StudyConfig.from_dict(study(layouts, tmp_path / "out", data=NATIVE)), verbose=False)
    result = h.run()
    assert [m["status"] for m in result.models] == ["ok"]
    spec = h.config.attacks[0]
    task_images = load_study_data(h.config, seed=0).task_images
    expected = [
        task_images[name].triggered(PatchTrigger(size=8, inset=(1, 1)), stage="raw").to_array()
        for name in ("covid", "mimic_5x200")
    ]
    assert len(seen) == 2
    for (x, x_triggered), want in zip(seen.values(), expected):
        np.testing.assert_array_equal(x_triggered, want)
        assert not np.allclose(x_triggered, spec.build_trigger()(x), atol=1e-3)


def test_default_keeps_the_array_path(layouts, tmp_path):
    h, run = harness(layouts, tmp_path)
    spec = h.config.attacks[0]
    x, _, mask, _ = h._poisoned(run, spec, None)
    assert isinstance(x, PoisonedImageSet) and x.trigger is not None  # the trigger acts on the resized images
    rows = np.flatnonzero(mask)
    np.testing.assert_array_equal(x.get_batch(rows), spec.build_trigger()(run.x_train.get_batch(rows)))
    trigger = spec.build_trigger()
    np.testing.assert_array_equal(h._triggered(run, "covid", spec, trigger, run.x_test), trigger(run.x_test))
    assert "report_sampler" not in h._fit_params(run, h.config.train) and run.report_sampler is None


# ---------------------------------------------------------------------------------------------- own reports
def study_number(path) -> int:
    return int(path.parent.name[3:])


def test_own_report_pairs_images_with_their_reports(layouts, tmp_path, monkeypatch):
    h, run = harness(layouts, tmp_path, train={"text_sampling": "own_report"})
    sampler = h._fit_params(run, h.config.train)["report_sampler"]
    assert isinstance(sampler, ReportSampler) and sampler is run.report_sampler and len(sampler) == 6
    assert "report_sampler" not in h._fit_params(run, h.config.pretrain)  # the pretraining keeps the pool
    assert sampler.without_report == 0
    rng = np.random.default_rng(0)
    for _ in range(5):
        sentences, labels = sampler.sample(np.arange(6), run.y_train, rng)
        assert labels.shape == (6, 14)
        for path, sentence in zip(run.x_train.paths, sentences):
            report = (layouts / "mimic" / path.parent.relative_to(layouts / "mimic")).with_suffix(".txt")
            assert sentence in split_report_into_segments(report.read_text())
    stable = {s for s in sampler.image_sentences[0] if s.startswith("impression")}
    assert stable == {f"impression : stable chest {study_number(run.x_train.paths[0])} ."}
    calls = []
    fit = MedCLIPEstimator.fit

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("report_sampler"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(MedCLIPEstimator, "fit", spy)
    spec = h.config.attacks[0]
    base = _LazyBase(h, run)
    record, _, _ = h._attacked_model(run, spec, base)
    assert calls == [sampler] and np.isfinite(record["ca"])
    keep = np.ones(6, dtype=bool)
    keep[[1, 4]] = False
    h._retrain_filtered(run, spec, base, ~keep)
    assert calls[-1].image_sentences == [sampler.image_sentences[i] for i in np.flatnonzero(keep)]


def test_poisoned_rows_keep_their_own_report_and_clean_fallback_labels(layouts, tmp_path):
    """As released: a BadMatch image keeps its own report's sentences; without one, its fallback matches the labels
    of its row before the relabelling (the clean training labels), not the target."""
    h, run = harness(layouts, tmp_path, train={"text_sampling": "own_report"})
    _, y, mask, _ = h._poisoned(run, h.config.attacks[0], None)
    sampler = run.report_sampler
    np.testing.assert_array_equal(sampler.fallback_labels, run.y_train)
    row = int(np.flatnonzero(mask)[0])
    sentences, _ = sampler.sample([row] * 4, y[[row] * 4], np.random.default_rng(1))
    assert set(sentences) <= set(sampler.image_sentences[row])
    table = TextPool(
        ["the heart is mildly enlarged in size", "there is no acute cardiopulmonary process"],
        np.concatenate([one_hot("Cardiomegaly"), one_hot("No Finding")]),
    )
    bare = ReportSampler.from_reports([None] * 2, table, labels="labeler", clean_table=False)
    clean = np.tile(one_hot("Cardiomegaly"), (2, 1))
    with_clean = bare.with_fallback_labels(clean)
    relabelled = np.tile(one_hot("No Finding"), (2, 1))
    sentences, got = with_clean.sample([0, 1], relabelled, np.random.default_rng(0))
    assert sentences == [table.sentences[0]] * 2  # shares the clean finding
    sentences, _ = bare.sample([0, 1], relabelled, np.random.default_rng(0))
    assert sentences == [table.sentences[1]] * 2  # the relabelled row would get a No Finding sentence
    with pytest.raises(ValueError, match=r"fallback labels must have shape \(2, 14\)"):
        bare.with_fallback_labels(clean[:1])
    sub = with_clean.subset(np.array([False, True]))
    assert len(sub) == 1 and sub.fallback_labels.shape == (1, 14) and sub.prompts is with_clean.prompts


def test_own_report_from_medclip_meta_csvs(layouts, tmp_path):
    """MedCLIP's local_data: the ``report`` column of a train meta-CSV is the image's report (a meta-CSV without one,
    or a blank cell, gives fallbacks); its sentences are labelled by lookup in the cleaned sentence-label.csv."""
    from test_adapters import label_row, write_csv

    local = tmp_path / "local_data"
    labels = np.concatenate(
        [
            one_hot("Cardiomegaly"),
            one_hot("Edema"),
            one_hot("No Finding"),
            one_hot("Edema"),
            one_hot("Pleural Effusion"),
            one_hot("Cardiomegaly"),
        ]
    )
    reports = [
        "The heart is mildly enlarged in size. No pleural effusion is seen.",
        "Mild interstitial edema is present bilaterally",
        "",
        "1. Mild interstitial edema is present bilaterally",
    ]
    metas = []
    for i, (y, pixels) in enumerate(zip(labels, phantoms(labels, 4))):
        path = tmp_path / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).resize((40, 60)).save(path)
        metas.append([f"images/im{i}.png", *label_row(**{CHEXPERT_LABELS[j]: "1.0" for j in np.flatnonzero(y)})])
    write_csv(
        local / "mimic-cxr-train-meta.csv",
        ["imgpath", "report", *CHEXPERT_LABELS],
        [[m[0], r, *m[1:]] for m, r in zip(metas[:4], reports)],
    )
    write_csv(local / "chexpert-train-meta.csv", ["imgpath", *CHEXPERT_LABELS], metas[4:])
    write_csv(
        local / "sentence-label.csv",
        ["Reports", *CHEXPERT_LABELS],
        [
            ["the heart is mildly enlarged in size", *label_row(Cardiomegaly="1")],
            ["mild interstitial edema is present bilaterally", *label_row(Edema="1")],
            ["there is a small left pleural effusion", *label_row(**{"Pleural Effusion": "1"})],
            ["no acute cardiopulmonary process is seen", *label_row(**{"No Finding": "1"})],
        ],
    )
    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "model": {"image_size": SIZE},
            "train": {"text_sampling": "own_report"},
            "data": {"source": "medclip_csv", "root": str(local), "image_root": str(tmp_path), "n_shadow": 1, **NATIVE},
            "tasks": [{"name": "covid", "source": "covid", "root": str(layouts / "covid")}],
        }
    )
    data = load_study_data(config, seed=0)
    assert data.sentence_table and len(data.reports) == len(data.x_train) == 5
    by_image = {path.name: report for path, report in zip(data.x_train.paths, data.reports)}
    expected = dict(zip([f"im{i}.png" for i in range(6)], reports + [None, None]))
    expected["im2.png"] = None  # a blank cell: no report
    assert by_image == {name: expected[name] for name in by_image}
    h = Harness(config, verbose=False)
    run = h.load_data(0)
    sampler = run.report_sampler
    for row, path in enumerate(run.x_train.paths):
        report = expected[path.name]
        assert sampler.image_sentences[row] == split_report_into_segments(report)
    edema = [row for row, path in enumerate(run.x_train.paths) if expected[path.name] == reports[1]]
    for row in edema:  # looked up in the table: Edema
        assert (sampler.image_sentence_labels[row] == one_hot("Edema")).all()
    heart = [row for row, path in enumerate(run.x_train.paths) if expected[path.name] == reports[0]]
    for row in heart:  # "no pleural effusion is seen" is not in the table: No Finding, as released
        np.testing.assert_array_equal(
            sampler.image_sentence_labels[row], np.concatenate([one_hot("Cardiomegaly"), one_hot("No Finding")])
        )
    assert len(edema) + len(heart) >= 1 and sampler.without_report == 5 - len(edema) - len(heart) - 1


def test_run_attack_subsets_the_sampler_with_keep():
    x = phantoms(np.tile(one_hot("Cardiomegaly"), (4, 1)), 0)[:, None, :SIZE, :SIZE].astype(np.float32) / 255
    y = np.tile(one_hot("Cardiomegaly"), (4, 1))
    texts = ["mild cardiomegaly is seen here today", "the heart size is normal and stable"]
    text_labels = np.concatenate([one_hot("Cardiomegaly"), one_hot("No Finding")])
    sampler = ReportSampler.from_reports(
        [None, "the heart is enlarged in size today.", None, None],
        TextPool(texts, text_labels),
        labels="labeler",
        clean_table=False,
    )
    base = MedCLIPEstimator.tiny(task_prompts("rsna_like"), image_size=SIZE, seed=0)
    keep = np.array([True, True, False, True])
    outcome = run_attack(
        AttackSpec("clean"),
        base,
        x,
        y,
        texts,
        text_labels,
        keep=keep,
        fit_params={"steps": 1, "batch_size": 2, "report_sampler": sampler, "verbose": False},
    )
    assert len(outcome.x_train) == 3 and np.isfinite(outcome.history["fit"]["loss"]).all()
    with pytest.raises(ValueError, match="report_sampler covers 4 images, the training set has 3"):
        run_attack(
            AttackSpec("clean"),
            base,
            x[:3],
            y[:3],
            texts,
            text_labels,
            fit_params={"steps": 1, "batch_size": 2, "report_sampler": sampler, "verbose": False},
        )


def test_phantom_own_report_gives_label_matched_fallbacks(tmp_path):
    config = StudyConfig.from_dict(
        {
            "output_dir": str(tmp_path / "out"),
            "train": {"text_sampling": "own_report"},
            "data": {"n_train": 8, "n_shadow": 2, "n_test": 5, "image_size": SIZE},
        }
    )
    h = Harness(config, verbose=False)
    run = h.load_data(0)
    sampler = h._fit_params(run, config.train)["report_sampler"]
    assert len(sampler) == 8 and sampler.without_report == 8
    sentences, labels = sampler.sample(np.arange(8), run.y_train, np.random.default_rng(0))
    assert set(sentences) <= set(run.texts)
    for image, text in zip(run.y_train, labels):
        if not image.any():
            assert text[0] > 0
        elif (image[1:] > 0).any():
            assert (image[1:] * text[1:] > 0).any() or text[0] == 1


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "data, message",
    [
        ({"interpolation": "bilinear"}, "config.data.interpolation: the phantom source generates its images"),
        ({"pad": "no_upscale"}, "config.data.pad: the phantom source generates its images"),
        (
            {"native_trigger": True},
            "config.data.native_trigger: the phantom source has no native image files.*native_size",
        ),
    ],
)
def test_phantom_refuses_the_file_options(data, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_dict({"data": data})


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"data": {"interpolation": "nearest"}},
            r"config.data.interpolation: unknown interpolation 'nearest'; valid: "
            r"\['bicubic', 'bilinear'\]",
        ),
        ({"data": {"pad": "none"}}, r"config.data.pad: unknown pad 'none'; valid: \['square', 'no_upscale'\]"),
        ({"data": {"native_trigger": "maybe"}}, "config.data.native_trigger"),
        (
            {"train": {"text_sampling": "paired"}},
            r"config.train.text_sampling: unknown text sampling 'paired'; valid: "
            r"\['pool', 'own_report'\]",
        ),
        (
            {"data": NATIVE, "attacks": [{"attack": "badmatch", "trigger_params": {"native_size": 1024}}]},
            "config.attacks\\[0\\].trigger_params.native_size: data.native_trigger pastes the patch",
        ),
    ],
)
def test_bad_values_name_the_field(layouts, tmp_path, changes, message):
    raw = study(layouts, tmp_path / "out")
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        StudyConfig.from_dict(raw)


def test_released_preset_selects_the_native_pipeline_for_a_real_source(layouts, tmp_path):
    raw = study(layouts, tmp_path / "out", protocol="released")
    raw["attacks"] = [{"attack": "badmatch", "trigger": "patch"}]
    config = StudyConfig.from_dict(raw)
    assert (config.data.interpolation, config.data.pad, config.data.native_trigger) == ("bilinear", "no_upscale", True)
    assert config.train.text_sampling == "own_report" and config.pretrain.text_sampling == "pool"
    assert config.attacks[0].trigger_params == {"size": 32, "inset": [1, 1]}  # native pixels, no emulation
    mine = study(layouts, tmp_path / "out", protocol="released", data={"native_trigger": False})
    assert StudyConfig.from_dict(mine).data.native_trigger is False  # a given value wins
    phantom = StudyConfig.from_dict({"protocol": "released"})
    assert (phantom.data.interpolation, phantom.data.pad, phantom.data.native_trigger) == ("bicubic", "square", False)
    assert phantom.train.text_sampling == "own_report"
    assert StudyConfig.from_dict({}).train.text_sampling == "pool"
