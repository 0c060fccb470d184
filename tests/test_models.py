"""MedCLIP model tests: released state-dict layout, tiny forward shapes, pooling, and the offline tokenizers.

How ``tests/golden/medclip_*_keys.txt`` were derived (one ``key<TAB>shape`` per line, release order): from the
architecture rules, not from our model. ``logit_scale`` []; torchvision ResNet-50 names (``conv1``, ``bn1``,
``layer{1..4}.{b}.conv{1,2,3}/bn{1,2,3}``, ``downsample.0/.1`` on block 0, every BatchNorm with weight, bias,
running_mean, running_var and a scalar num_batches_tracked) with MedCLIP's ``fc`` = Linear(2048->512, no bias)
as the projection; HF transformers-4.x ``SwinModel`` names for swin-tiny (``attention.self.{query,key,value,
relative_position_bias_table [169, heads], relative_position_index [49, 49]}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``, ``downsample.reduction`` (no bias)/``norm``, final ``layernorm``),
confirmed by a public MedCLIP-Swin -> mmseg converter that reads exactly these keys and by a public note
counting 231 ``vision_model.model.*`` keys in the released ViT checkpoint; ``vision_model.projection_head``
[512, 768]; HF 4.x ``BertModel`` names for Bio_ClinicalBERT (vocab 28996, 12 layers, incl. the then-persistent
``embeddings.position_ids`` [1, 512] and ``pooler.dense``) and ``text_model.projection_head`` [512, 768].
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from artmed.models import (
    MedCLIPModel,
    SwinVisionConfig,
    build_medclip,
    build_vocab,
    default_tokenizer,
    load_medclip,
    load_tokenizer,
    released_state_dict,
    save_released,
    save_tokenizer,
)
from artmed.models.config import preset_config
from artmed.models.resnet import resnet50

GOLDEN = Path(__file__).parent / "golden"


def _golden(name: str) -> dict[str, list[int]]:
    rows = {}
    for line in (GOLDEN / f"medclip_{name}_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        rows[key] = ast.literal_eval(shape)
    return rows


@pytest.fixture(scope="module")
def tiny() -> MedCLIPModel:
    torch.manual_seed(0)
    return build_medclip("tiny", vocab_size=100).eval()


def small_swin(**text: object) -> MedCLIPModel:
    torch.manual_seed(0)
    return build_medclip(
        "tiny",
        vocab_size=50,
        text=dict(text),
        vision=SwinVisionConfig(
            image_size=32,
            patch_size=4,
            window_size=4,
            embed_dim=16,
            depths=(2, 1),
            num_heads=(1, 2),
            drop_path_rate=0.0,
        ),
    ).eval()


@pytest.mark.parametrize("preset", ["resnet50", "swin_tiny"])
def test_released_state_dict_layout(preset: str) -> None:
    golden = _golden(preset)
    with torch.device("meta"):
        model = build_medclip(preset)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    legacy = {k: list(v.shape) for k, v in model.legacy_buffers().items()}
    assert sorted(set(golden) - set(ours) - set(legacy)) == []
    assert sorted(set(ours) - set(golden)) == []
    assert {k: golden[k] for k in ours} == ours
    # what we recompute instead of persisting is exactly what the 2022 release stored as buffers
    released_buffers = {k for k in golden if k.endswith(("position_ids", "relative_position_index"))}
    assert released_buffers == set(golden) - set(ours)
    assert all(legacy[k] == golden[k] for k in released_buffers)


@pytest.mark.parametrize("preset", ["resnet50", "swin_tiny"])
def test_released_export_has_the_release_key_set(preset: str) -> None:
    """What ``save_released`` writes is exactly the released checkpoint's keys and shapes (a strict load there)."""
    with torch.device("meta"):
        model = build_medclip(preset)
    exported = {k: list(v.shape) for k, v in released_state_dict(model).items()}
    assert exported == _golden(preset)


def test_released_export_round_trips(tmp_path: Path) -> None:
    """A Swin model written as ``pytorch_model.bin`` holds the recomputed buffers with their values, and loads back
    (strict, the buffers checked against the architecture) to identical outputs."""
    model = small_swin()
    file = save_released(model, tmp_path / "released")
    assert file.name == "pytorch_model.bin"
    state = torch.load(file, weights_only=True)
    buffers = {k for k in state if k.endswith(("position_ids", "relative_position_index"))}
    assert "text_model.model.embeddings.position_ids" in buffers and len(buffers) == 4  # 3 Swin blocks + BERT
    assert not any(k.endswith("token_type_ids") for k in state)
    positions = model.text_model.model.config.max_position_embeddings
    assert torch.equal(state["text_model.model.embeddings.position_ids"], torch.arange(positions)[None])
    loaded = load_medclip(tmp_path / "released", variant=model.config)
    pixels = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))
    assert set(loaded.state_dict()) == set(state) - buffers


def test_resnet50_matches_torchvision_parameter_count() -> None:
    with torch.device("meta"):
        net = resnet50()
    assert sum(p.numel() for p in net.parameters()) == 25_557_032  # torchvision.models.resnet50()
    assert "layer4.2.bn3.num_batches_tracked" in net.state_dict()


def test_tiny_forward_shapes(tiny: MedCLIPModel) -> None:
    pixels = torch.randn(3, 1, 64, 64)
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    out = tiny(pixels, ids, mask)
    assert out["img_embeds"].shape == (3, 512) and out["text_embeds"].shape == (2, 512)
    assert out["logits_per_image"].shape == (3, 2)
    assert torch.equal(out["logits_per_text"], out["logits_per_image"].t())
    assert torch.allclose(out["img_embeds"].norm(dim=-1), torch.ones(3), atol=1e-5)
    feats = tiny.image_features(pixels)
    assert feats["last_stage"].shape == (3, 128, 2, 2) and feats["pooled"].shape == (3, 128)
    assert torch.allclose(tiny.vision_model.project(feats["pooled"]), feats["embedding"])
    raw = tiny.encode_image(pixels, normalize=False)
    assert torch.allclose(raw, feats["embedding"]) and not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert torch.allclose(tiny.encode_text(ids, mask), out["text_embeds"])


def test_seeded_builds_are_identical() -> None:
    torch.manual_seed(5)
    first = build_medclip("tiny", vocab_size=40).state_dict()
    torch.manual_seed(5)
    second = build_medclip("tiny", vocab_size=40).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_scale_is_clamped() -> None:
    model = build_medclip("tiny", vocab_size=30)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
        assert model.scale().item() == pytest.approx(100.0, rel=1e-5)
        model.logit_scale.fill_(-3.0)
        assert model.scale().item() == pytest.approx(1.0)


def test_one_channel_is_repeated(tiny: MedCLIPModel) -> None:
    gray = torch.randn(2, 1, 64, 64)
    assert torch.allclose(tiny.encode_image(gray), tiny.encode_image(gray.repeat(1, 3, 1, 1)), atol=1e-6)
    with pytest.raises(ValueError, match="pixel_values"):
        tiny.encode_image(torch.randn(2, 2, 64, 64))


def test_swin_features_and_released_names() -> None:
    model = small_swin()
    gray = torch.randn(2, 1, 32, 32)
    feats = model.image_features(gray)
    assert feats["last_stage"].shape == (2, 16, 32) and feats["pooled"].shape == (2, 32)
    assert torch.allclose(model.encode_image(gray), model.encode_image(gray.repeat(1, 3, 1, 1)), atol=1e-6)
    state = model.state_dict()
    assert "vision_model.model.encoder.layers.0.blocks.1.attention.self.query.weight" in state
    assert "vision_model.model.encoder.layers.0.blocks.1.output.dense.bias" in state
    assert not [k for k in state if "q_proj" in k or "mlp.fc" in k]
    other = small_swin()
    torch.nn.init.zeros_(other.vision_model.projection_head.weight)
    other.load_state_dict(state)  # released names map back onto the native modules
    assert torch.allclose(other.encode_image(gray), model.encode_image(gray))


def _hidden_mean(model: MedCLIPModel, ids: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    states = model.text_model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return torch.stack([states[i].mean(1) for i in layers]).mean(0)


def test_pooling_uses_configured_hidden_states(tiny: MedCLIPModel) -> None:
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones_like(ids)
    assert tiny.text_model.pool_layers == (1, 2, -1)
    assert preset_config("resnet50").text.pool_layers == (1, 2, -1)  # the released MedCLIPTextModel's choice
    pooled = tiny.text_model.pooled(ids, mask)
    assert torch.allclose(pooled, _hidden_mean(tiny, ids, mask, (1, 2, 2)), atol=1e-6)  # 2 layers: -1 == 2
    assert not torch.allclose(pooled, _hidden_mean(tiny, ids, mask, (0, 1, 2)), atol=1e-4)
    with pytest.raises(ValueError, match="pool_layers"):
        build_medclip("tiny", vocab_size=100, pool_layers=(1, 3))


def test_masked_mean_ignores_padding() -> None:
    torch.manual_seed(0)
    unmasked = build_medclip("tiny", vocab_size=100).eval()
    masked = build_medclip("tiny", vocab_size=100, masked_mean=True).eval()
    masked.load_state_dict(unmasked.state_dict())
    ids = torch.randint(5, 100, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    pad_mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    full = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(masked.encode_text(ids, full), unmasked.encode_text(ids, full), atol=1e-6)
        assert torch.allclose(masked.encode_text(padded, pad_mask), masked.encode_text(ids, full), atol=1e-5)
        assert not torch.allclose(unmasked.encode_text(padded, pad_mask), unmasked.encode_text(ids, full), atol=1e-3)


def test_preset_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown MedCLIP preset"):
        build_medclip("vit_huge")
    with pytest.raises(ValueError, match="unknown override"):
        preset_config("tiny", colour=3)
    with pytest.raises(ValueError, match="ambiguous"):
        preset_config("swin_tiny", num_heads=(1, 2))
    config = preset_config("tiny", vocab_size=77, widths=[8, 16, 32, 64], text={"num_layers": 3})
    assert config.vision.widths == (8, 16, 32, 64) and config.text.num_layers == 3 and config.text.vocab_size == 77


def test_tokenizer_keeps_real_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTMED_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = default_tokenizer()
    assert tokenizer.model_max_length == 77
    tokens = tokenizer.tokenize("Mild Cardiomegaly with small left pleural effusion; no pneumothorax.")
    assert tokens == [
        "mild",
        "cardiomegaly",
        "with",
        "small",
        "left",
        "pleural",
        "effusion",
        ";",
        "no",
        "pneumothorax",
        ".",
    ]
    ids = tokenizer("xylophonic 42", add_special_tokens=False)["input_ids"]  # unseen word: characters, not UNK
    assert tokenizer.unk_token_id not in ids
    again = default_tokenizer()
    assert again.get_vocab() == tokenizer.get_vocab()
    assert len(list((tmp_path / "cache").glob("tokenizer-*/vocab.txt"))) == 1
    with_corpus = default_tokenizer(["the zorblax sign"])
    assert with_corpus.tokenize("zorblax") == ["zorblax"] and "zorblax" not in tokenizer.get_vocab()


def test_build_vocab_is_deterministic(tmp_path: Path) -> None:
    sentences = ["Heart size is normal.", "Small RIGHT effusion, unchanged."]
    first = (build_vocab(sentences, tmp_path / "a") / "vocab.txt").read_text()
    second = (build_vocab(list(reversed(sentences)), tmp_path / "b") / "vocab.txt").read_text()
    assert first == second
    lines = first.splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(lines) == len(set(lines))
    tokenizer = load_tokenizer(tmp_path / "a")
    assert tokenizer.tokenize("Right effusion unchanged") == ["right", "effusion", "unchanged"]
    cased = load_tokenizer(build_vocab(sentences, tmp_path / "cased", lowercase=False) / "vocab.txt")
    assert cased.tokenize("RIGHT Heart") == ["RIGHT", "Heart"]


def test_saved_tokenizers_reload(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(build_vocab(["Patchy RIGHT opacity"], tmp_path / "src", lowercase=False))
    save_tokenizer(tokenizer, tmp_path / "plain")
    assert (tmp_path / "plain" / "vocab.txt").read_text() == (tmp_path / "src" / "vocab.txt").read_text()
    assert load_tokenizer(tmp_path / "plain").tokenize("RIGHT opacity") == ["RIGHT", "opacity"]
    tokenizer.save_pretrained(str(tmp_path / "hf"))  # transformers 5 writes tokenizer.json, no vocab.txt
    assert load_tokenizer(tmp_path / "hf").get_vocab() == tokenizer.get_vocab()


def test_load_tokenizer_needs_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (4, 16, 32, 32), (1, 2, 1, 1), (3, 8, 2, 5)])
def test_max_pool_without_autograd_is_torchs_bit_for_bit(shape):
    from artmed.models.resnet import MaxPool

    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(*shape, generator=generator))  # relu: many tied zeros, as after the stem
    x.view(-1)[:: max(1, x.numel() // 5)] = float("-inf")
    x.view(-1)[1] = float("nan")
    pool = MaxPool(kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        ours, torchs = pool(x), torch.nn.functional.max_pool2d(x, 3, 2, 1)
    assert ours.shape == torchs.shape and torch.equal(ours.isnan(), torchs.isnan())
    assert torch.equal(ours.nan_to_num(0.0, 1.0, -1.0), torchs.nan_to_num(0.0, 1.0, -1.0))


def test_max_pool_with_autograd_keeps_torchs_gradient():
    from artmed.models.resnet import MaxPool

    x = torch.relu(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    MaxPool(3, 2, 1)(x).sum().backward()
    torch.nn.functional.max_pool2d(y, 3, 2, 1).sum().backward()
    assert torch.equal(x.grad, y.grad)  # ties: the whole gradient to one element, as torch's kernel sends it
