"""MedCLIP vision encoders (ResNet and Swin) whose state-dict names equal the released checkpoints'.

Both take MedCLIP-normalised pixels (B, 1|3, H, W), repeat one channel to three, and expose ``features``
(last stage, pooled before projection, projected embedding) and ``project(pooled)``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformers import SwinConfig, SwinModel

from artmed.models.config import ResNetVisionConfig, SwinVisionConfig, VisionConfig
from artmed.models.resnet import ResNet

__all__ = ["ResNetVisionEncoder", "SwinVisionEncoder", "build_vision_encoder"]


def _three_channels(pixel_values: torch.Tensor) -> torch.Tensor:
    if pixel_values.ndim != 4 or pixel_values.shape[1] not in (1, 3):
        raise ValueError(f"pixel_values must be (B, 1|3, H, W), got shape {tuple(pixel_values.shape)}")
    return pixel_values.repeat(1, 3, 1, 1) if pixel_values.shape[1] == 1 else pixel_values


class ResNetVisionEncoder(nn.Module):
    """``model`` = torchvision-layout ResNet whose ``fc`` (no bias) IS the projection, as in MedCLIP-ResNet."""

    def __init__(self, config: ResNetVisionConfig, proj_dim: int = 512) -> None:
        super().__init__()
        self.model = ResNet(config.block, config.layers, config.widths, num_classes=proj_dim, fc_bias=False)
        self.pooled_dim = self.model.num_features

    def legacy_buffers(self) -> dict[str, torch.Tensor]:
        """Released buffers this model does not persist: none for the ResNet."""
        return {}

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, C) -> shared-space embedding (B, proj_dim), not normalised."""
        return self.model.fc(pooled)

    def features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``last_stage`` (B, C, h, w), ``pooled`` (B, C) and ``embedding`` (B, proj_dim)."""
        last_stage = self.model.forward_features(_three_channels(pixel_values))
        pooled = self.model.pool(last_stage)
        return {"last_stage": last_stage, "pooled": pooled, "embedding": self.project(pooled)}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)["embedding"]


# Released MedCLIP-ViT checkpoints were saved with transformers 4.x, whose Swin blocks are named
# attention.self.{query,key,value,relative_position_bias_table}, attention.output.dense, intermediate.dense and
# output.dense; transformers 5 renamed them. These pairs translate released <-> native names inside one block.
_RELEASED_TO_NATIVE = [
    (r"(blocks\.\d+\.)attention\.self\.query\.", r"\1attention.q_proj."),
    (r"(blocks\.\d+\.)attention\.self\.key\.", r"\1attention.k_proj."),
    (r"(blocks\.\d+\.)attention\.self\.value\.", r"\1attention.v_proj."),
    (
        r"(blocks\.\d+\.)attention\.self\.relative_position_bias_table$",
        r"\1attention.relative_position_bias.relative_position_bias_table",
    ),
    (r"(blocks\.\d+\.)attention\.output\.dense\.", r"\1attention.o_proj."),
    (r"(blocks\.\d+\.)intermediate\.dense\.", r"\1mlp.fc1."),
    (r"(blocks\.\d+\.)output\.dense\.", r"\1mlp.fc2."),
]
_NATIVE_TO_RELEASED = [
    (r"(blocks\.\d+\.)attention\.q_proj\.", r"\1attention.self.query."),
    (r"(blocks\.\d+\.)attention\.k_proj\.", r"\1attention.self.key."),
    (r"(blocks\.\d+\.)attention\.v_proj\.", r"\1attention.self.value."),
    (
        r"(blocks\.\d+\.)attention\.relative_position_bias\.relative_position_bias_table$",
        r"\1attention.self.relative_position_bias_table",
    ),
    (r"(blocks\.\d+\.)attention\.o_proj\.", r"\1attention.output.dense."),
    (r"(blocks\.\d+\.)mlp\.fc1\.", r"\1intermediate.dense."),
    (r"(blocks\.\d+\.)mlp\.fc2\.", r"\1output.dense."),
]


def _rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, name)
        if count:
            return new
    return name


class SwinVisionEncoder(nn.Module):
    """``model`` = HF ``SwinModel`` from a config; ``pooler_output`` -> ``projection_head`` (no bias).

    Its state dict uses the released (transformers 4.x) Swin names whatever transformers is installed, so
    checkpoints saved here load in the original MedCLIP code and vice versa.
    """

    def __init__(self, config: SwinVisionConfig, proj_dim: int = 512) -> None:
        super().__init__()
        swin_config = SwinConfig(
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_channels=3,
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=config.window_size,
            drop_path_rate=config.drop_path_rate,
        )
        self.model = SwinModel(swin_config, add_pooling_layer=True)
        self.pooled_dim = int(self.model.num_features)
        self.projection_head = nn.Linear(self.pooled_dim, proj_dim, bias=False)
        if any(".attention.q_proj." in name for name, _ in self.model.named_parameters()):  # transformers >= 5
            self.register_state_dict_post_hook(_to_released_names)
            self.register_load_state_dict_pre_hook(_to_native_names)

    def legacy_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers the release stores (``relative_position_index``, shape (w², w²)) that this model recomputes.

        Keys are relative to this module (``model.encoder...``); values are what the release holds.
        """
        persistent = set(self.model.state_dict().keys())
        legacy: dict[str, torch.Tensor] = {}
        for name, buffer in self.model.named_buffers():
            if not name.endswith("relative_position_index") or name in persistent:
                continue
            block = name.split("attention.")[0]
            side = int(round(buffer.numel() ** 0.5))
            legacy[f"model.{block}attention.self.relative_position_index"] = buffer.reshape(side, side)
        return legacy

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 768) -> shared-space embedding (B, proj_dim), not normalised."""
        return self.projection_head(pooled)

    def features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``last_stage`` (B, L, C) after the final layer norm, ``pooled`` (B, C), ``embedding`` (B, proj_dim)."""
        output = self.model(pixel_values=_three_channels(pixel_values))
        pooled = output.pooler_output
        return {"last_stage": output.last_hidden_state, "pooled": pooled, "embedding": self.project(pooled)}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)["embedding"]


def _renamed_in_place(state_dict: dict[str, Any], inner: str, rules: list[tuple[str, str]]) -> None:
    items = list(state_dict.items())
    state_dict.clear()  # rebuilt in the same order, so renamed keys keep their place
    for key, value in items:
        state_dict[inner + _rename(key[len(inner) :], rules) if key.startswith(inner) else key] = value


def _to_released_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    _renamed_in_place(state_dict, prefix + "model.", _NATIVE_TO_RELEASED)


def _to_native_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    _renamed_in_place(state_dict, prefix + "model.", _RELEASED_TO_NATIVE)


def build_vision_encoder(config: VisionConfig, proj_dim: int = 512) -> ResNetVisionEncoder | SwinVisionEncoder:
    """The vision encoder a config describes."""
    if isinstance(config, ResNetVisionConfig):
        return ResNetVisionEncoder(config, proj_dim)
    if isinstance(config, SwinVisionConfig):
        return SwinVisionEncoder(config, proj_dim)
    raise ValueError(f"no vision encoder for config type {type(config).__name__}")
