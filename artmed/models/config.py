"""Dataclass configs for the MedCLIP encoders and the named presets ("resnet50", "swin_tiny", "tiny").

Every model is constructible offline from these configs; the released presets reproduce the shapes of the
released MedCLIP checkpoints (Bio_ClinicalBERT text side, torchvision ResNet-50 or swin-tiny-patch4-window7-224).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RELEASED_LOGIT_SCALE_MAX",
    "ResNetVisionConfig",
    "SwinVisionConfig",
    "TextConfig",
    "MedCLIPConfig",
    "PRESETS",
    "preset_config",
    "config_to_dict",
    "config_from_dict",
]


RELEASED_LOGIT_SCALE_MAX = 4.6052
"""The released ``MedCLIPModel.compute_logits`` clamps ``logit_scale`` to [0, 4.6052] (ln 100 = 4.605170...)."""


@dataclass(frozen=True)
class ResNetVisionConfig:
    """A torchvision-layout ResNet whose ``fc`` is the bias-free projection to the shared space."""

    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)

    def __post_init__(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNetVisionConfig.block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(*self.layers, *self.widths) < 1:
            raise ValueError(f"ResNetVisionConfig needs 4 positive layers/widths, got {self.layers}/{self.widths}")


@dataclass(frozen=True)
class SwinVisionConfig:
    """A HF ``SwinModel`` (built from ``SwinConfig``, never downloaded) + Linear(pooled -> proj_dim, no bias)."""

    image_size: int = 224
    patch_size: int = 4
    window_size: int = 7
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    drop_path_rate: float = 0.1

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"SwinVisionConfig depths {self.depths} and num_heads {self.num_heads} differ in length")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ValueError(
                    f"SwinVisionConfig stage {stage}: width {self.embed_dim * 2**stage} "
                    f"is not divisible by {heads} heads"
                )


@dataclass(frozen=True)
class TextConfig:
    """A ``BertModel`` shape plus MedCLIP's pooling (which hidden states, and whether padding is averaged)."""

    vocab_size: int = 28996
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    pool_layers: tuple[int, ...] = (1, 2, -1)
    masked_mean: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TextConfig.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if not self.pool_layers:
            raise ValueError("TextConfig.pool_layers must name at least one hidden state")
        n_states = self.num_layers + 1
        for index in self.pool_layers:
            if not -n_states <= index < n_states:
                raise ValueError(
                    f"TextConfig.pool_layers index {index} is outside the {n_states} hidden states "
                    f"(embeddings + {self.num_layers} layers)"
                )


VisionConfig = ResNetVisionConfig | SwinVisionConfig


@dataclass(frozen=True)
class MedCLIPConfig:
    """The whole dual encoder: vision config, text config, shared embedding size, temperature init and the cap on the
    learnt ``logit_scale`` (ln 100; the released ``compute_logits`` clamps to ``RELEASED_LOGIT_SCALE_MAX``, 4.6052)."""

    vision: VisionConfig = field(default_factory=ResNetVisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    proj_dim: int = 512
    logit_scale_init: float = 0.07
    logit_scale_max: float = math.log(100.0)

    def __post_init__(self) -> None:
        if not isinstance(self.vision, (ResNetVisionConfig, SwinVisionConfig)):
            raise ValueError(
                f"MedCLIPConfig.vision must be a ResNetVisionConfig or SwinVisionConfig, "
                f"got {type(self.vision).__name__}"
            )
        if not isinstance(self.text, TextConfig):
            raise ValueError(f"MedCLIPConfig.text must be a TextConfig, got {type(self.text).__name__}")
        if self.proj_dim < 1 or not 0 < self.logit_scale_init:
            raise ValueError(
                f"MedCLIPConfig needs proj_dim >= 1 and logit_scale_init > 0, "
                f"got {self.proj_dim} and {self.logit_scale_init}"
            )
        if not (isinstance(self.logit_scale_max, (int, float)) and 0 < self.logit_scale_max < math.inf):
            raise ValueError(f"MedCLIPConfig.logit_scale_max must be a positive number, got {self.logit_scale_max!r}")


PRESETS: dict[str, MedCLIPConfig] = {
    "resnet50": MedCLIPConfig(vision=ResNetVisionConfig(), text=TextConfig()),
    "swin_tiny": MedCLIPConfig(vision=SwinVisionConfig(), text=TextConfig()),
    "tiny": MedCLIPConfig(
        vision=ResNetVisionConfig(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
        text=TextConfig(
            vocab_size=1000,
            hidden_size=64,
            num_layers=2,
            num_heads=2,
            intermediate_size=128,
            max_position=128,
            pool_layers=(1, 2, -1),
        ),
    ),
}


def _apply(config: Any, overrides: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {where} field(s) {unknown}; valid: {sorted(names)}")
    return dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def preset_config(preset: str = "tiny", vocab_size: int | None = None, **overrides: Any) -> MedCLIPConfig:
    """The config of a named preset with overrides.

    ``overrides`` may name MedCLIPConfig fields (``proj_dim``, ``logit_scale_init``, ``vision``/``text`` as a
    config or a dict of field changes) or a field of the preset's vision/text config directly when the name
    is unambiguous (e.g. ``masked_mean=True``, ``pool_layers=(1, 2, -1)``, ``widths=(8, 16, 32, 64)``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown MedCLIP preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[preset]
    top = {f.name for f in dataclasses.fields(MedCLIPConfig)}
    vision_changes: dict[str, Any] = {}
    text_changes: dict[str, Any] = {} if vocab_size is None else {"vocab_size": int(vocab_size)}
    top_changes: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in ("vision", "text") and isinstance(value, dict):
            (vision_changes if name == "vision" else text_changes).update(value)
        elif name in top:
            top_changes[name] = value
        else:
            in_vision = name in {f.name for f in dataclasses.fields(config.vision)}
            in_text = name in {f.name for f in dataclasses.fields(config.text)}
            if in_vision and in_text:
                raise ValueError(
                    f"override {name!r} is ambiguous (vision and text both have it): "
                    f"pass vision={{...}} or text={{...}}"
                )
            if not (in_vision or in_text):
                raise ValueError(f"unknown override {name!r} for preset {preset!r}")
            (vision_changes if in_vision else text_changes)[name] = value
    config = dataclasses.replace(config, **top_changes)
    return dataclasses.replace(
        config,
        vision=_apply(config.vision, vision_changes, type(config.vision).__name__),
        text=_apply(config.text, text_changes, "TextConfig"),
    )


def config_to_dict(config: MedCLIPConfig) -> dict[str, Any]:
    """A JSON-ready dict of a config; the vision part carries ``"type": "resnet" | "swin"``."""
    data = dataclasses.asdict(config)
    data["vision"]["type"] = "resnet" if isinstance(config.vision, ResNetVisionConfig) else "swin"
    return data


def config_from_dict(data: dict[str, Any]) -> MedCLIPConfig:
    """The inverse of ``config_to_dict``; ValueError naming the field on bad input."""
    try:
        vision = dict(data["vision"])
        kind = vision.pop("type")
        vision_cls = {"resnet": ResNetVisionConfig, "swin": SwinVisionConfig}[kind]
        as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in vision.items()}
        text: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(data["text"]).items()}
        rest = {k: v for k, v in data.items() if k not in ("vision", "text")}
        return MedCLIPConfig(vision=vision_cls(**as_tuples), text=TextConfig(**text), **rest)
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a MedCLIP config dict (problem with {err})") from err
