"""The MedCLIP dual encoder (vision + text + learnable temperature) and ``build_medclip`` for named presets."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from artmed.models.config import MedCLIPConfig, preset_config
from artmed.models.text import TextEncoder
from artmed.models.vision import build_vision_encoder

__all__ = ["MedCLIPModel", "build_medclip", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = math.log(100.0)
"""The default cap on ``logit_scale`` (``MedCLIPConfig.logit_scale_max``)."""


class MedCLIPModel(nn.Module):
    """``vision_model`` + ``text_model`` projecting to a shared ``proj_dim`` space, and ``logit_scale``.

    State-dict keys equal the released checkpoints' (``vision_model.model.*``, ``text_model.model.*``,
    ``*.projection_head.weight``, ``logit_scale``) apart from buffers older transformers persisted
    (see ``legacy_buffers``), which ``load_medclip`` checks and drops.
    """

    def __init__(self, config: MedCLIPConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MedCLIPConfig()
        self.vision_model = build_vision_encoder(self.config.vision, self.config.proj_dim)
        self.text_model = TextEncoder(self.config.text, self.config.proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / self.config.logit_scale_init)))

    def legacy_buffers(self) -> dict[str, torch.Tensor]:
        """Released-format keys (full names) of buffers this model recomputes instead of persisting."""
        legacy = {f"vision_model.{k}": v for k, v in self.vision_model.legacy_buffers().items()}
        legacy.update({f"text_model.{k}": v for k, v in self.text_model.legacy_buffers().items()})
        return legacy

    def scale(self) -> torch.Tensor:
        """The temperature multiplier exp(logit_scale), logit_scale clamped to [0, ``config.logit_scale_max``]."""
        return self.logit_scale.clamp(0.0, self.config.logit_scale_max).exp()

    def image_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``last_stage``, ``pooled`` (before projection) and ``embedding`` (projected, not normalised)."""
        return self.vision_model.features(pixel_values)

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """MedCLIP-normalised pixels (B, 1|3, H, W) -> (B, proj_dim) embeddings, L2-normalised by default."""
        embeds = self.vision_model(pixel_values)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Token ids (B, T) and mask -> (B, proj_dim) embeddings, L2-normalised by default."""
        embeds = self.text_model(input_ids, attention_mask)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Normalised embeddings of both sides and the scaled cosine logits in both directions."""
        img_embeds = self.encode_image(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        logits_per_image = self.scale() * img_embeds @ text_embeds.t()
        return {
            "img_embeds": img_embeds,
            "text_embeds": text_embeds,
            "logits_per_image": logits_per_image,
            "logits_per_text": logits_per_image.t(),
        }


def build_medclip(preset: str = "tiny", vocab_size: int | None = None, **overrides: Any) -> MedCLIPModel:
    """A freshly initialised MedCLIP of a named preset ("resnet50", "swin_tiny", "tiny").

    ``vocab_size`` sets the BERT vocabulary (give the tokenizer's ``len(tokenizer)`` for "tiny");
    ``overrides`` change config fields (see ``artmed.models.config.preset_config``). Seed with
    ``torch.manual_seed`` before calling for reproducible weights.
    """
    return MedCLIPModel(preset_config(preset, vocab_size=vocab_size, **overrides))
