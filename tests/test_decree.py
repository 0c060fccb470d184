"""DECREE on a planted encoder: a small mask in the trigger's corner on the backdoored one, a large mask on the clean
one; parameter checks; and the verdict through the harness on clean and BadDist models."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from artmed.attacks.pipeline import AttackSpec
from artmed.attacks.triggers import PatchTrigger
from artmed.constants import IMAGE_MEAN, IMAGE_STD
from artmed.data.phantom import PhantomGenerator, sample_labels
from artmed.defenses import registry
from artmed.defenses.base import EvaluationContext, ModelVerdict
from artmed.defenses.decree import DECREE, mean_pairwise_cosine
from artmed.estimator import MedCLIPEstimator
from artmed.evaluations.config import DataConfig, DefenseSpec, StudyConfig, TrainConfig
from artmed.evaluations.harness import Harness
from artmed.evaluations.study import write_outputs

pytestmark = pytest.mark.filterwarnings("ignore:.*label group:UserWarning")
PROMPTS = {"Normal": ["no acute cardiopulmonary findings"], "Pneumonia": ["focal consolidation of pneumonia"]}
SIZE = 32
TRIGGER = PatchTrigger()  # its footprint is the planted trigger's: the 5 px bottom-right corner at 32 px


class PlantedEncoder(nn.Module):
    """A clean toy image encoder: a fixed random projection of the image minus the mean clean image (so clean
    embeddings point in unrelated directions). With ``backdoor``, an image whose trigger corner holds a black-and-white
    checkerboard maps to one fixed vector (``strength`` times the clean embedding's norm): the gate opens with the
    corner's contrast along the checkerboard (0.5 for the planted trigger, within ±0.03 for the phantoms' smooth
    corners). A gate on the corner's mean darkness instead is flat (no gradient) at DECREE's random start, and
    ``strength`` 1 leaves the backdoor's pull too weak there: DECREE then found the clean toy's mask (PL1 0.15) on both.
    """

    def __init__(
        self, reference: np.ndarray, backdoor: bool, dim: int = 32, seed: int = 0, strength: float = 10.0
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        corner = TRIGGER.mask(reference.shape[-2:])
        rows, cols = np.indices(reference.shape[-2:])
        self.register_buffer("reference", torch.from_numpy(reference).float())
        self.register_buffer("projection", torch.randn(dim, reference.size, generator=generator) / reference.size**0.5)
        self.register_buffer("target", torch.randn(dim, generator=generator))
        self.register_buffer("corner", torch.from_numpy(corner))
        self.register_buffer("checker", torch.from_numpy(np.where((rows + cols) % 2 == 0, 1.0, -1.0)[corner]).float())
        self.backdoor = backdoor
        self.strength = strength

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raw = pixels * IMAGE_STD + IMAGE_MEAN
        embedding = (raw - self.reference).flatten(1) @ self.projection.T
        if not self.backdoor:
            return embedding
        patch = raw[:, 0][:, self.corner]
        contrast = ((patch - patch.mean(dim=1, keepdim=True)) * self.checker).mean(dim=1)
        gate = torch.sigmoid((contrast - 0.25) / 0.05)[:, None]
        return (1 - gate) * embedding + self.strength * gate * self.target * embedding.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models and batches here are tiny: a second torch thread only adds contention on a shared CPU (measured
    10x slower DECREE runs under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def checkerboard(x):
    """The planted trigger: a black-and-white checkerboard over the corner patch."""
    rows, cols = np.indices(x.shape[-2:])
    corner = TRIGGER.mask(x.shape[-2:])
    out = x.copy()
    out[..., corner] = ((rows + cols) % 2 == 0)[corner]
    return out


def phantoms(n, seed):
    return PhantomGenerator(SIZE, seed).generate(sample_labels(n, seed)).astype(np.float32)


def planted(backdoor):
    estimator = MedCLIPEstimator.tiny(PROMPTS, image_size=SIZE, seed=0, device="cpu")
    estimator.model.vision_model = PlantedEncoder(phantoms(256, seed=1).mean(axis=0), backdoor)
    return estimator


@pytest.fixture(scope="module")
def verdicts():
    context = EvaluationContext(x_clean=phantoms(24, seed=2), seed=0)
    out = {}
    for name, backdoor in (("clean", False), ("backdoored", True)):
        estimator = planted(backdoor)
        before = {k: v.clone() for k, v in estimator.model.state_dict().items()}
        verdict = DECREE(epochs=300).run(replace(context, estimator=estimator))
        after = estimator.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), "DECREE changed the model"
        assert all(p.grad is None for p in estimator.model.parameters())
        out[name] = verdict
    return out


def test_the_planted_backdoor():
    x = phantoms(32, seed=3)
    embeddings = {backdoor: planted(backdoor).embed_images(checkerboard(x)) for backdoor in (False, True)}
    similarity = {k: float(mean_pairwise_cosine(torch.from_numpy(e))) for k, e in embeddings.items()}
    assert similarity[True] > 0.999 and similarity[False] < 0.5  # measured 1.000 and 0.20


def test_finds_the_planted_trigger(verdicts):
    verdict = verdicts["backdoored"]
    extra = verdict.extra
    assert isinstance(verdict, ModelVerdict) and verdict.backdoored
    assert extra["reached"] and extra["similarity"] > 0.99
    assert extra["pl1"] < 0.02  # measured 0.0052 (0.0053 with the former options): a faint (m ≈ 0.2) checkerboard
    # suffices to open the gate
    assert verdict.score == pytest.approx(1 - extra["pl1"]) and verdict.threshold == pytest.approx(0.9)
    mask, pattern = extra["mask"], extra["pattern"]
    assert mask.shape == (SIZE, SIZE) and pattern.shape == (1, SIZE, SIZE)
    assert 0 <= mask.min() and mask.max() <= 1
    corner = TRIGGER.mask((SIZE, SIZE))
    assert mask[corner].sum() / mask.sum() > 0.9  # measured 1.000
    rows, cols = np.indices((SIZE, SIZE))
    squares = ((rows + cols) % 2 == 0)[corner]
    inverted = pattern[0][corner]
    assert inverted[squares].min() > inverted[~squares].max()  # the inverted pattern is the checkerboard


def test_clean_encoder_needs_a_large_mask(verdicts):
    verdict, extra = verdicts["clean"], verdicts["clean"].extra
    assert not verdict.backdoored and extra["reached"]
    assert extra["pl1"] > 0.1  # measured 0.134 (0.145 with the former options)
    assert extra["clean_similarity"] < 0.1  # measured -0.002: the toy's clean embeddings are spread out


def test_mean_pairwise_cosine():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    expected = (0 + 2**-0.5 + 2**-0.5) / 3
    assert float(mean_pairwise_cosine(e)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "params, error",
    [
        ({"target_similarity": 1.0}, "target_similarity must be in"),
        ({"threshold": 0.0}, "threshold must be a PL1-norm"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lambda_min": float("inf")}, "lambda_min must be a positive number"),
        ({"lambda_factor": 1.0}, "lambda_factor must be a number > 1"),
        ({"batch_size": 3}, "batch_size must be an integer >= 4"),
        ({"epochs": 2.5}, "epochs must be an integer >= 1"),
        ({"patience": True}, "patience must be an integer >= 0"),
        ({"n_images": 1}, "n_images must be an integer >= 2 or None"),
        ({"seed": -1}, "seed must be a non-negative integer or None"),
        ({"verbose": "yes"}, "verbose must be a bool"),
    ],
)
def test_parameter_errors_name_the_parameter(params, error):
    with pytest.raises(ValueError, match=error):
        DECREE(**params)


def test_context_errors():
    with pytest.raises(ValueError, match="needs context.estimator"):
        DECREE().run(EvaluationContext(x_clean=phantoms(4, seed=0)))
    with pytest.raises(ValueError, match="needs context.x_clean"):
        DECREE().run(EvaluationContext(estimator=planted(False)))
    with pytest.raises(ValueError, match="at least 2 clean images"):
        DECREE().run(EvaluationContext(estimator=planted(False), x_clean=phantoms(1, seed=0)))


def test_registered():
    assert registry.get("decree") is DECREE and DECREE.kind == "model"


def test_through_the_harness(tmp_path):
    config = StudyConfig(
        seed=0,
        output_dir=str(tmp_path / "study"),
        data=DataConfig(n_train=120, n_test=20, n_shadow=16, image_size=SIZE),
        pretrain=TrainConfig(steps=3, batch_size=16),
        train=TrainConfig(steps=3, batch_size=16),
        attacks=[AttackSpec("clean"), AttackSpec("baddist", baddist_params={"settings": "tiny", "steps": 10})],
        defenses=[DefenseSpec("decree", {"epochs": 5})],
    )
    result = Harness(config, verbose=False).run()
    clean, attacked = result.defenses
    paths = write_outputs(result)
    for record in (clean, attacked):
        assert result.arrays[record["cell"]]["mask"].shape == (SIZE, SIZE)
        name = f"inverted_{record['attack_key']}+decree"
        assert paths[name] == result.output_dir / "figures" / f"{name}.png" and paths[name].stat().st_size > 1000
        assert record["status"] == "ok" and record["kind"] == "model"
        assert 0 <= record["model_score"] <= 1 and record["model_flagged"] in (0.0, 1.0)
        assert record["threshold"] == pytest.approx(0.9)
    assert clean["backdoored"] is False and "mask_overlap" not in clean
    assert attacked["backdoored"] is True and 0 <= attacked["mask_overlap"] <= 1
