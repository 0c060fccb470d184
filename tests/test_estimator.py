"""MedCLIPEstimator: unpaired training learns a separable task, prediction/embedding API, caching, errors."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from artmed import MedCLIPEstimator
from artmed.constants import CHEXPERT_LABELS
from artmed.data.dataset import ArrayImageSet, TextPool
from artmed.models import checkpoint, default_tokenizer, save_medclip, save_tokenizer

SIZE = 32
PROMPTS = {
    "left": ["left lung opacity", "opacity in the left lung"],
    "right": ["right lung opacity", "opacity in the right lung"],
}
TEXTS = [
    "opacity in the left lung",
    "left lung opacity",
    "there is a left sided opacity",
    "mass in the left lung",
    "opacity in the right lung",
    "right lung opacity",
    "there is a right sided opacity",
    "mass in the right lung",
]
COLUMNS = [CHEXPERT_LABELS.index("Cardiomegaly"), CHEXPERT_LABELS.index("Pleural Effusion")]


def label_vectors(classes: np.ndarray) -> np.ndarray:
    """14-d label vectors: class 0 -> Cardiomegaly, class 1 -> Pleural Effusion."""
    y = np.zeros((len(classes), 14), np.float32)
    y[np.arange(len(classes)), np.asarray(COLUMNS)[classes]] = 1.0
    return y


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise with a bright blob in the left (class 0) or right (class 1) half."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    x = rng.normal(0.3, 0.05, (n, 1, SIZE, SIZE))
    for i, c in enumerate(classes):
        cx = SIZE * (0.25 if c == 0 else 0.75) + rng.normal(0, 1.5)
        cy = SIZE * 0.5 + rng.normal(0, SIZE * 0.15)
        x[i, 0] += 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (SIZE / 10) ** 2))
    return np.clip(x, 0, 1).astype(np.float32), classes


TEXT_LABELS = label_vectors(np.array([0, 0, 0, 0, 1, 1, 1, 1]))


@pytest.fixture(scope="module")
def test_set():
    return blob_images(128, seed=1)


@pytest.fixture(scope="module")
def trained(test_set):
    """A tiny estimator trained unpaired for 80 steps, with its untrained accuracy and the history."""
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0)
    x_test, c_test = test_set
    before = float((est.predict(x_test).argmax(1) == c_test).mean())
    x, c = blob_images(256, seed=0)
    history = est.fit(x, label_vectors(c), TEXTS, TEXT_LABELS, steps=80, batch_size=16, lr=1e-3, seed=0, verbose=False)
    return est, before, history


def test_unpaired_training_learns_zero_shot_task(trained, test_set):
    est, before, history = trained
    x_test, c_test = test_set
    after = float((est.predict(x_test).argmax(1) == c_test).mean())
    assert before < 0.75
    assert after >= 0.9
    assert len(history["loss"]) == len(history["lr"]) == 80
    assert np.mean(history["loss"][-10:]) < np.mean(history["loss"][:10])
    assert max(history["lr"]) == pytest.approx(1e-3, rel=1e-6)
    assert history["lr"][0] < history["lr"][8] and history["lr"][-1] < 1e-4  # warm-up, then cosine decay


def test_predict_is_a_prompt_ensemble_softmax(trained, test_set):
    est, _, _ = trained
    x = test_set[0][:6]
    probs = est.predict(x)
    assert probs.shape == (6, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    image = est.embed_images(x)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, rtol=1e-5)
    scale = est.model.scale().item()
    logits = np.stack([scale * (image @ est.embed_texts(p).T).mean(1) for p in PROMPTS.values()], axis=1)
    np.testing.assert_allclose(est.zero_shot_logits(x), logits, rtol=1e-4, atol=1e-4)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_batching_and_imageset_inputs_give_the_same_predictions(trained, test_set):
    est, _, _ = trained
    x, c = test_set[0][:10], test_set[1][:10]
    full = est.predict(x)
    np.testing.assert_allclose(est.predict(x, batch_size=3), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.predict(ArrayImageSet(x, label_vectors(c))), full, rtol=1e-5, atol=1e-6)


def test_activation_layers(trained, test_set):
    est, _, _ = trained
    x = test_set[0][:4]
    assert est.layer_names == ["vision_last_stage", "image_embedding", "image_pooled"]
    assert est.get_activations(x, "image_pooled", batch_size=2).shape == (4, 128)
    assert est.get_activations(x, -1, batch_size=2).shape == (4, 128)
    assert est.get_activations(x, 0, batch_size=2).shape[:2] == (4, 128)
    emb = est.get_activations(x, "image_embedding", batch_size=4)
    np.testing.assert_allclose(emb / np.linalg.norm(emb, axis=1, keepdims=True), est.embed_images(x), atol=1e-5)
    tensor = est.get_activations(torch.from_numpy(x), "image_pooled", batch_size=4, framework=True)
    assert isinstance(tensor, torch.Tensor) and tensor.requires_grad


def test_with_prompts_shares_the_model_and_clone_does_not(trained, test_set):
    est, _, _ = trained
    x = test_set[0][:4]
    three = est.with_prompts({**PROMPTS, "none": ["no acute cardiopulmonary process"]})
    assert three.model is est.model and three.nb_classes == 3 and three.classes == ["left", "right", "none"]
    assert three.predict(x).shape == (4, 3)
    copy = est.clone()
    assert copy.model is not est.model
    before = est.predict(x)
    with torch.no_grad():
        for p in copy.model.vision_model.parameters():
            p.add_(0.5)
    np.testing.assert_array_equal(est.predict(x), before)


def test_prompt_cache_follows_text_weights(test_set):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=3)
    x = test_set[0][:4]
    before = est.predict(x)
    with torch.no_grad():
        est.model.text_model.projection_head.weight.mul_(-1.0)
    np.testing.assert_allclose(est.predict(x), before[:, ::-1], rtol=1e-4, atol=1e-5)


def test_training_is_seeded_and_accepts_lazy_sets():
    x, c = blob_images(24, seed=5)

    class LazySet:
        """Serves batches only; np.array() on it would fail, as reading a huge set into memory would."""

        labels = label_vectors(c)

        def __len__(self):
            return len(x)

        def get_batch(self, indices):
            return x[np.asarray(indices)]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the image set was materialised")

    runs = []
    for source in (x, LazySet()):
        est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1)
        y = label_vectors(c) if source is x else None
        runs.append(
            est.fit(source, y, TextPool(TEXTS, TEXT_LABELS), steps=4, batch_size=8, lr=1e-3, seed=7, verbose=False)[
                "loss"
            ]
        )
    assert runs[0] == runs[1]
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1)
    other = est.fit(x, label_vectors(c), TEXTS, TEXT_LABELS, steps=4, batch_size=8, lr=1e-3, seed=8, verbose=False)
    assert other["loss"] != runs[0]


def test_frozen_text_side_is_untouched():
    x, c = blob_images(16, seed=2)
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0)
    text_before = {k: v.clone() for k, v in est.model.text_model.state_dict().items()}
    vision_before = est.model.vision_model.model.fc.weight.clone()
    est.fit(x, label_vectors(c), TEXTS, TEXT_LABELS, steps=3, batch_size=8, lr=1e-3, train_text=False, verbose=False)
    for k, v in est.model.text_model.state_dict().items():
        assert torch.equal(v, text_before[k]), k
    assert not torch.equal(est.model.vision_model.model.fc.weight, vision_before)


def test_save_and_load_round_trip(trained, test_set, tmp_path):
    est, _, _ = trained
    est.save(tmp_path / "bundle")
    loaded = MedCLIPEstimator.load(tmp_path / "bundle", device="cpu")
    assert loaded.prompts == est.prompts and loaded.input_shape == est.input_shape
    assert loaded.output == "probabilities" and loaded.texts is None
    np.testing.assert_allclose(loaded.predict(test_set[0][:8]), est.predict(test_set[0][:8]), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "bundle" / "tokenizer" / "vocab.txt").is_file()  # plain BERT format, as the layout promises


def test_bundles_of_the_older_config_format_load(trained, test_set, tmp_path):
    """estimator.json once tagged the vision kind at the top (``vision_kind``); such folders still load."""
    import json

    est, _, _ = trained
    est.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "estimator.json"
    meta = json.loads(meta_file.read_text())
    meta["model"]["vision_kind"] = meta["model"]["vision"].pop("type")
    meta_file.write_text(json.dumps(meta))
    loaded = MedCLIPEstimator.load(tmp_path / "old", device="cpu")
    assert loaded.model.config == est.model.config
    meta["model"]["vision_kind"] = "vit"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="estimator.json: invalid model config"):
        MedCLIPEstimator.load(tmp_path / "old", device="cpu")


def test_output_mode_and_text_pool_travel_with_copies_and_saves(trained, test_set, tmp_path):
    est = trained[0].clone()
    est.set_params(output="logits")
    est.set_texts(TextPool(TEXTS, TEXT_LABELS))
    x = test_set[0][:4]
    for other in (est.clone(), est.with_prompts(PROMPTS), est.clone_for_refitting()):
        assert other.output == "logits" and other.texts == TEXTS
        np.testing.assert_array_equal(other.text_labels, TEXT_LABELS)
    est.save(tmp_path / "bundle")
    loaded = MedCLIPEstimator.load(tmp_path / "bundle", device="cpu")
    assert loaded.output == "logits" and loaded.texts == TEXTS
    np.testing.assert_array_equal(loaded.text_labels, TEXT_LABELS)
    np.testing.assert_allclose(loaded.predict(x), est.zero_shot_logits(x), rtol=1e-5, atol=1e-5)
    assert MedCLIPEstimator.load(tmp_path / "bundle", device="cpu", output="probabilities").output == "probabilities"


def test_bad_text_pools_are_named():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    with pytest.raises(ValueError, match="set_texts needs text_labels"):
        est.set_texts(TEXTS)
    with pytest.raises(ValueError, match="text_labels"):
        est.set_texts(TEXTS, TEXT_LABELS[:3])
    with pytest.raises(ValueError, match="text_labels given without texts"):
        MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, text_labels=TEXT_LABELS)
    x, c = blob_images(4, seed=0)
    with pytest.raises(ValueError, match="without texts"):
        est.fit(x, label_vectors(c), text_labels=TEXT_LABELS, steps=1, verbose=False)
    assert est.texts is None


def _bundle_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("previous", [False, True])
def test_a_save_that_fails_midway_leaves_no_torn_model(tmp_path, monkeypatch, previous):
    """The folder appears complete or not at all; a previous model stays untouched; no temp folder is left."""
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0)
    path = tmp_path / "models" / "m"
    if previous:
        est.save(path)
    before = _bundle_files(path) if previous else None

    def torn_write(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"half a weights file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1).save(path)
    assert [p.name for p in path.parent.iterdir()] == (["m"] if previous else [])
    if previous:
        assert _bundle_files(path) == before
        MedCLIPEstimator.load(path, device="cpu")


def test_save_replaces_a_model_folder_whole_and_refuses_other_folders(tmp_path):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0)
    path = tmp_path / "m"
    est.save(path)
    (path / "stale.txt").write_text("from an older save")
    other = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=1, batch_size=7)
    other.save(path)
    assert not (path / "stale.txt").exists() and [p.name for p in tmp_path.iterdir()] == ["m"]
    assert MedCLIPEstimator.load(path, device="cpu").batch_size == 7
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("not a model")
    (tmp_path / "file").write_text("not a folder")
    for target in (tmp_path / "notes", tmp_path / "file"):
        with pytest.raises(ValueError, match="not an estimator directory"):
            est.save(target)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "not a model"
    (tmp_path / "empty").mkdir()
    (tmp_path / "torn" / "tokenizer").mkdir(parents=True)  # what an interrupted in-place save left behind
    (tmp_path / "torn" / "model.safetensors").write_bytes(b"half a weights file")
    for target in (tmp_path / "empty", tmp_path / "torn"):
        est.save(target)
        assert MedCLIPEstimator.load(target, device="cpu").batch_size == est.batch_size


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_model_folder_and_tokenizer_cache_get_the_umask_permissions(tmp_path, monkeypatch, umask, mode):
    """Folders written via a temp folder are as open as ``mkdir`` makes them (not mkdtemp's 0700), their files as
    ``open`` makes them (safetensors' own 0600 included)."""
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    monkeypatch.setenv("ARTMED_CACHE_DIR", str(tmp_path / "cache"))
    old = os.umask(umask)
    try:
        est.save(tmp_path / "m")
        default_tokenizer(["a sentence with the word umasktest"])
    finally:
        os.umask(old)
    folders = [tmp_path / "m", *(tmp_path / "cache").glob("tokenizer-*")]
    assert len(folders) == 2
    assert {oct(f.stat().st_mode & 0o777) for f in folders} == {oct(mode)}
    files = [f for f in (tmp_path / "m").rglob("*") if f.is_file()]
    assert "model.safetensors" in {f.name for f in files}
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(mode & 0o666)}


def poison_weights(file, keys):
    """Rewrite the safetensors ``file`` with a NaN in the first of ``keys`` and an inf in the others."""
    state = load_file(str(file))
    for i, key in enumerate(keys):
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan") if i == 0 else float("inf")
    save_file(state, str(file))


NONFINITE = ["vision_model.model.fc.weight", "text_model.projection_head.weight"]


@pytest.mark.parametrize("layout", ["bundle", "checkpoint"])
def test_models_with_non_finite_weights_are_refused(tmp_path, layout):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    if layout == "bundle":
        est.save(tmp_path)
    else:  # a released-style checkpoint folder: weights, config and the tokenizer's vocab.txt
        save_medclip(est.model, tmp_path)
        save_tokenizer(est.tokenizer, tmp_path)
    poison_weights(tmp_path / "model.safetensors", NONFINITE)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in 2 tensor\(s\): ") as err:
        if layout == "bundle":
            MedCLIPEstimator.load(tmp_path, device="cpu")
        else:
            MedCLIPEstimator.from_checkpoint(
                tmp_path, "tiny", prompts=PROMPTS, input_shape=(1, SIZE, SIZE), device="cpu"
            )
    assert str(tmp_path) in str(err.value) and all(key in str(err.value) for key in NONFINITE)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((1, SIZE, SIZE), np.float32), "rank 3"),
        (np.zeros((2, 2, SIZE, SIZE), np.float32), "channels"),
        (np.zeros((2, 1, SIZE, SIZE + 1), np.float32), "spatial size"),
    ],
)
def test_bad_image_shapes_are_named(x, message):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    with pytest.raises(ValueError, match=message):
        est.predict(x)
    with pytest.raises(ValueError, match=message):
        est.loss_gradient(x, np.zeros(len(x), np.int64))


def test_three_channel_images_are_accepted():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x = blob_images(3, seed=0)[0]
    np.testing.assert_allclose(est.predict(np.repeat(x, 3, axis=1)), est.predict(x), rtol=1e-5, atol=1e-6)


def test_bad_training_inputs_are_named():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x, c = blob_images(8, seed=0)
    y = label_vectors(c)
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        est.fit(x, y[:, :13], TEXTS, TEXT_LABELS, steps=1, verbose=False)
    with pytest.raises(ValueError, match="text_labels"):
        est.fit(x, y, TEXTS, TEXT_LABELS[:5], steps=1, verbose=False)
    with pytest.raises(ValueError, match="text_labels"):
        est.fit(x, y, TEXTS, TEXT_LABELS[:, :10], steps=1, verbose=False)
    with pytest.raises(ValueError, match="texts"):
        est.fit(x, y, steps=1, verbose=False)
    with pytest.raises(ValueError, match="8 items"):
        est.fit(x, y[:4], TEXTS, TEXT_LABELS, steps=1, verbose=False)


EDEMA = CHEXPERT_LABELS.index("Edema")


@pytest.mark.parametrize("value", [5.0, 0.5, -2.0, np.nan, np.inf])
@pytest.mark.parametrize("which", ["y", "text_labels"])
def test_training_labels_outside_chexpert_values_are_named(which, value):
    """Labels are 1, 0 or -1 (uncertain); anything else names the array, row, column and value."""
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x, c = blob_images(8, seed=0)
    labels = {"y": label_vectors(c), "text_labels": TEXT_LABELS.copy()}
    labels[which][2, EDEMA] = value
    message = rf"{which}.* 1 row\(s\); first: row 2, column {EDEMA} \(Edema\) = {value}"
    with pytest.raises(ValueError, match=message):
        est.fit(x, labels["y"], TEXTS, labels["text_labels"], steps=1, batch_size=8, verbose=False)


def test_uncertain_training_labels_are_accepted():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x, c = blob_images(8, seed=0)
    y = label_vectors(c)
    y[:, EDEMA] = -1.0
    assert len(est.fit(x, y, TEXTS, TEXT_LABELS, steps=1, batch_size=8, verbose=False)["loss"]) == 1


VERBS = {
    "predict": lambda est, x, bs: est.predict(x, batch_size=bs),
    "zero_shot_logits": lambda est, x, bs: est.zero_shot_logits(x, batch_size=bs),
    "embed_images": lambda est, x, bs: est.embed_images(x, batch_size=bs),
    "embed_texts": lambda est, x, bs: est.embed_texts(TEXTS, batch_size=bs),
    "get_activations": lambda est, x, bs: est.get_activations(x, "image_pooled", batch_size=bs),
    "get_activations (framework)": lambda est, x, bs: est.get_activations(x, 0, batch_size=bs, framework=True),
    "loss_gradient": lambda est, x, bs: est.loss_gradient(x, np.zeros(len(x), np.int64), batch_size=bs),
    "class_gradient": lambda est, x, bs: est.class_gradient(x, batch_size=bs),
    "compute_loss": lambda est, x, bs: est.compute_loss(x, np.zeros(len(x), np.int64), batch_size=bs),
    "fit": lambda est, x, bs: est.fit(
        x, np.zeros((len(x), 14), np.float32), TEXTS, TEXT_LABELS, steps=1, batch_size=bs, verbose=False
    ),
}


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "8", float("nan")])
@pytest.mark.parametrize("verb", list(VERBS))
def test_bad_batch_sizes_are_refused_by_every_verb(verb, bad):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x = blob_images(4, seed=0)[0]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        VERBS[verb](est, x, bad)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"amp": "no"}, "amp must be True or False"),
        ({"num_workers": -1}, "num_workers"),
        ({"input_shape": (2, SIZE, SIZE)}, "input_shape"),
        ({"batch_size": 16, "amp": 1}, "amp must be True or False"),
        ({"output": "scores"}, "output must be one of"),
    ],
)
def test_set_params_checks_and_changes_nothing_on_a_bad_value(params, message):
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, batch_size=8)
    before = {k: getattr(est, k) for k in ("batch_size", "amp", "num_workers", "input_shape", "output")}
    with pytest.raises(ValueError, match=message):
        est.set_params(**params)
    assert {k: getattr(est, k) for k in before} == before
    with pytest.raises(ValueError, match=message):
        MedCLIPEstimator(est.model, est.tokenizer, PROMPTS, **{"input_shape": (1, SIZE, SIZE), **params})
    est.set_params(batch_size=16, amp=False)
    assert est.batch_size == 16 and est.amp is False


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"left": ["left lung opacity"], "right": []}, "'right'"),
        ({"left": ["left lung opacity"], "right": ["  "]}, "'right'"),
        ({"left": ["left lung opacity"], "right": "right lung opacity"}, "'right'"),
        ({"left": ["left lung opacity"]}, "at least 2 classes"),
        (["left", "right"], "dict"),
    ],
)
def test_bad_prompts_are_named(prompts, message):
    with pytest.raises(ValueError, match=message):
        MedCLIPEstimator.tiny(prompts, image_size=SIZE)


def test_unknown_layer_lists_the_layers():
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x = blob_images(2, seed=0)[0]
    for layer in ("fc", 3, -4):
        with pytest.raises(ValueError, match="vision_last_stage.*image_embedding.*image_pooled"):
            est.get_activations(x, layer, batch_size=2)


def test_epochs_set_the_number_of_steps():
    x, c = blob_images(16, seed=4)
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0)
    history = est.fit(x, label_vectors(c), TEXTS, TEXT_LABELS, nb_epochs=2, batch_size=8, verbose=False)
    assert len(history["loss"]) == 4


def test_missing_checkpoint_parts_are_named(tmp_path):
    with pytest.raises(ValueError, match="vocab.txt"):
        MedCLIPEstimator.from_checkpoint(tmp_path, "resnet50", prompts=PROMPTS)
    with pytest.raises(ValueError, match="estimator.json"):
        MedCLIPEstimator.load(tmp_path)


def test_mis_scaled_arrays_are_clipped_with_a_warning_and_image_sets_refused():
    """Arrays are clipped as ART classifiers do (attacks overshoot); NaN raises; an ImageSet read from disk must be
    in range (mis-scaled data there is a data bug, not an attack's overshoot)."""
    est = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE)
    x, c = blob_images(2, seed=0)
    for bad in (x * 255.0, (x - 0.5) / 0.25):
        with pytest.warns(UserWarning, match="clipped to \\[0, 1\\].*divided by 255"):
            got = est.predict(bad)
        np.testing.assert_array_equal(got, est.predict(np.clip(bad, 0, 1)))
    with pytest.raises(ValueError, match=r"NaN.*\[0, 1\]"):
        est.predict(np.full_like(x, np.nan))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        est.predict(ArrayImageSet(x * 255.0, label_vectors(c)))
