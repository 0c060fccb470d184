"""Checkpoint I/O tests: round trips, strict key/shape validation, legacy buffers and weights-only loading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from artmed.models import MedCLIPModel, SwinVisionConfig, build_medclip, load_medclip, save_medclip
from artmed.models.config import preset_config

POSITION_IDS = "text_model.model.embeddings.position_ids"


class Payload:
    """An arbitrary object: unpickling it would run code a checkpoint must not be able to smuggle in."""


@pytest.fixture(scope="module")
def tiny() -> MedCLIPModel:
    torch.manual_seed(1)
    return build_medclip("tiny", vocab_size=60).eval()


def _outputs(model: MedCLIPModel) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 1, 64, 64, generator=generator)
    ids = torch.randint(5, 60, (2, 8), generator=generator)
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(ids, torch.ones_like(ids))


def _released_like(model: MedCLIPModel) -> dict[str, torch.Tensor]:
    """The model's weights as a transformers-4.x era file holds them (legacy buffers included)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update({k: v.clone() for k, v in model.legacy_buffers().items() if not k.endswith("token_type_ids")})
    return state


def test_round_trip_safetensors(tiny: MedCLIPModel, tmp_path: Path) -> None:
    file = save_medclip(tiny, tmp_path)
    assert file.name == "model.safetensors"
    for variant in ("tiny", "auto"):
        loaded = load_medclip(tmp_path, variant=variant)
        assert not loaded.training
        for ours, theirs in zip(_outputs(tiny), _outputs(loaded)):
            assert torch.equal(ours, theirs)


def test_bin_with_legacy_position_ids_loads(tiny: MedCLIPModel, tmp_path: Path) -> None:
    state = _released_like(tiny)
    assert state[POSITION_IDS].shape == (1, tiny.config.text.max_position)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_medclip(tmp_path, variant=tiny.config)
    assert torch.equal(_outputs(loaded)[1], _outputs(tiny)[1])


def test_tampered_legacy_buffer_is_refused(tiny: MedCLIPModel, tmp_path: Path) -> None:
    state = _released_like(tiny)
    state[POSITION_IDS] = state[POSITION_IDS].flip(-1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=POSITION_IDS):
        load_medclip(tmp_path, variant="tiny")


def test_missing_key_is_named(tiny: MedCLIPModel, tmp_path: Path) -> None:
    state = tiny.state_dict()
    del state["text_model.projection_head.weight"]
    save_file(state, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): text_model\.projection_head\.weight"):
        load_medclip(tmp_path, variant="tiny")
    model = load_medclip(tmp_path, variant="tiny", strict=False)
    assert torch.equal(model.vision_model.model.fc.weight, tiny.vision_model.model.fc.weight)


def test_unexpected_key_and_wrong_shape_are_named(tiny: MedCLIPModel, tmp_path: Path) -> None:
    state = dict(tiny.state_dict())
    state["vision_model.projection_head.weight"] = torch.zeros(512, 128)
    state["vision_model.model.fc.weight"] = torch.zeros(512, 64)
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(ValueError) as info:
        load_medclip(tmp_path / "model.pt", variant="tiny")
    message = str(info.value)
    assert "unexpected keys (1): vision_model.projection_head.weight" in message
    assert "vision_model.model.fc.weight (checkpoint [512, 64], model [512, 128])" in message


def test_long_problem_lists_are_truncated(tiny: MedCLIPModel, tmp_path: Path) -> None:
    state = {k: v for k, v in tiny.state_dict().items() if not k.startswith("text_model.")}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): .* \.\.\. and \d+ more"):
        load_medclip(tmp_path, variant="tiny")


@pytest.mark.parametrize(
    "file, n_bad, listed",
    [
        ("model.safetensors", 1, "logit_scale$"),
        ("pytorch_model.bin", 2, "logit_scale, text_model.model.embeddings.LayerNorm.bias$"),
        ("model.safetensors", 7, r"(\w[\w.]*, ){4}\w[\w.]*, \.\.\.$"),
    ],
)
def test_non_finite_weights_are_refused(tiny: MedCLIPModel, tmp_path: Path, file: str, n_bad: int, listed: str) -> None:
    """NaN/inf weights name the first five tensors and the count; with strict=False too."""
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    floating = [k for k, v in state.items() if v.is_floating_point()]
    for i, key in enumerate(sorted(floating)[:n_bad]):
        state[key].view(-1)[-1] = (float("nan"), float("inf"), -float("inf"))[i % 3]
    if file.endswith(".safetensors"):
        save_file(state, str(tmp_path / file))
    else:
        torch.save(state, tmp_path / file)
    message = re.escape(f"{tmp_path} has non-finite values (NaN or inf) in {n_bad} tensor(s): ")
    for strict in (True, False):
        with pytest.raises(ValueError, match=message + listed):
            load_medclip(tmp_path, variant="tiny", strict=strict)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"logit_scale": torch.zeros(()), "payload": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_medclip(tmp_path)


def test_bad_paths_and_variants(tiny: MedCLIPModel, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_medclip(tmp_path / "absent")
    with pytest.raises(ValueError, match="holds no pytorch_model.bin"):
        load_medclip(tmp_path)
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"logit_scale": torch.zeros(())}, str(tmp_path / name))
    with pytest.raises(ValueError, match="several"):
        load_medclip(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        load_medclip(tmp_path / "a.safetensors", variant="vit_huge")
    with pytest.raises(ValueError, match="medclip_config.json"):
        load_medclip(tmp_path / "a.safetensors", variant="auto")


def test_released_swin_layout_loads(tmp_path: Path) -> None:
    """A Swin checkpoint in the release's format (4.x names, relative_position_index, position_ids) loads."""
    config = preset_config(
        "tiny",
        vocab_size=40,
        vision=SwinVisionConfig(
            image_size=32, window_size=4, embed_dim=16, depths=(2, 1), num_heads=(1, 2), drop_path_rate=0.0
        ),
    )
    torch.manual_seed(2)
    model = MedCLIPModel(config).eval()
    state = _released_like(model)
    index_key = "vision_model.model.encoder.layers.0.blocks.1.attention.self.relative_position_index"
    assert state[index_key].shape == (16, 16)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_medclip(tmp_path, variant=config)
    pixels = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))
    state[index_key] = torch.zeros_like(state[index_key])
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="relative_position_index"):
        load_medclip(tmp_path, variant=config)
