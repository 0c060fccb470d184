"""MedCLIP text encoder: a config-built ``BertModel`` + mean pooling of chosen hidden states + projection."""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from artmed.models.config import TextConfig

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module):
    """``model`` = ``BertModel`` (Bio_ClinicalBERT shape by default), ``projection_head`` = Linear(H -> 512, no bias).

    Pooling, as in the released MedCLIP code: stack ``hidden_states[i]`` for ``i`` in ``pool_layers`` (released:
    (1, 2, -1), i.e. the outputs of layers 1 and 2 and of the last layer; ``hidden_states[0]`` is the embedding
    output), average each over tokens, then average the layers. The release averages over ALL positions,
    padding included (``masked_mean=False``): a sentence's embedding then depends on how much padding its batch
    has. ``masked_mean=True`` averages only tokens with ``attention_mask == 1``, making it padding-independent
    but no longer equal to the released model's outputs.
    """

    def __init__(self, config: TextConfig, proj_dim: int = 512) -> None:
        super().__init__()
        bert_config = BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position,
            type_vocab_size=config.type_vocab_size,
            output_hidden_states=True,
        )
        self.model = BertModel(bert_config, add_pooling_layer=True)
        self.projection_head = nn.Linear(config.hidden_size, proj_dim, bias=False)
        self.pool_layers = tuple(config.pool_layers)
        self.masked_mean = bool(config.masked_mean)

    def legacy_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers older transformers saved (``position_ids``, ``token_type_ids``) that this BERT does not persist.

        Keys are relative to this module; values are what a faithful checkpoint holds.
        """
        persistent = set(self.model.state_dict().keys())
        return {
            f"model.{name}": buffer
            for name, buffer in self.model.named_buffers()
            if name in ("embeddings.position_ids", "embeddings.token_type_ids") and name not in persistent
        }

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled hidden states (B, H) before the projection."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = torch.stack([output.hidden_states[i] for i in self.pool_layers])  # (n, B, T, H)
        if self.masked_mean:
            weights = attention_mask.to(states.dtype)[None, :, :, None]
            token_mean = (states * weights).sum(2) / weights.sum(2).clamp_min(1.0)
        else:
            token_mean = states.mean(2)
        return token_mean.mean(0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.projection_head(self.pooled(input_ids, attention_mask))
