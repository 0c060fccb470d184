"""Zero-shot class prompts: validation and the per-class prompt-ensemble text embedding, cached.

A class's score is the mean over its prompts of ``scale * cos(image, prompt)``, which equals
``scale * image · mean_p(prompt_p)`` with normalised embeddings, so one (K, D) matrix of mean prompt
embeddings serves every prediction. It is recomputed whenever the text encoder's weights change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from artmed.inputs import tokenize


def check_prompts(prompts: Any) -> dict[str, list[str]]:
    """Return ``prompts`` as ``{class name: [sentences]}`` with at least two classes and one sentence each."""
    if not isinstance(prompts, Mapping):
        raise ValueError(f"prompts must be a dict class name -> list of sentences, got {type(prompts).__name__}")
    if len(prompts) < 2:
        raise ValueError(f"prompts need at least 2 classes for zero-shot classification, got {list(prompts)}")
    out: dict[str, list[str]] = {}
    for name, sentences in prompts.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"prompt class names must be non-empty strings, got {name!r}")
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)) or not sentences:
            raise ValueError(f"prompts for class {name!r} must be a non-empty list of sentences, got {sentences!r}")
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise ValueError(f"prompt {i} of class {name!r} must be a non-empty string, got {s!r}")
        out[name] = list(sentences)
    return out


def text_weights_key(text_model: nn.Module) -> tuple[int, ...]:
    """A cheap fingerprint of the text encoder's weights: changes whenever any parameter is modified in place."""
    return (id(text_model), *(v for p in text_model.parameters() for v in (p.data_ptr(), p._version)))


@torch.no_grad()
def encode_sentences(model: nn.Module, tokenizer: Any, sentences: list[str], device: torch.device,
                     batch_size: int, amp: bool = False) -> torch.Tensor:
    """Normalised float32 text embeddings (M, D); all sentences padded together, so chunking changes nothing."""
    ids, mask = tokenize(tokenizer, sentences, device)
    chunks = []
    for start in range(0, ids.shape[0], batch_size):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            emb = model.encode_text(ids[start:start + batch_size], mask[start:start + batch_size])
        chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
    return torch.cat(chunks)


class PromptBank:
    """Holds the class prompts and their cached (K, D) mean prompt embeddings for one model."""

    def __init__(self, prompts: Mapping[str, list[str]]) -> None:
        self.prompts = check_prompts(prompts)
        self._key: tuple[int, ...] | None = None
        self._matrix: torch.Tensor | None = None

    @property
    def classes(self) -> list[str]:
        """Class names in prompt order."""
        return list(self.prompts)

    def clear(self) -> None:
        """Drop the cached embeddings."""
        self._key, self._matrix = None, None

    def matrix(self, model: nn.Module, tokenizer: Any, device: torch.device, batch_size: int,
               amp: bool = False) -> torch.Tensor:
        """(K, D) mean of each class's normalised prompt embeddings (each class's prompts padded together)."""
        key = text_weights_key(model.text_model)
        if self._matrix is None or self._key != key or self._matrix.device != device:
            was_training = model.text_model.training
            model.text_model.eval()
            rows = [encode_sentences(model, tokenizer, s, device, batch_size, amp).mean(0)
                    for s in self.prompts.values()]
            model.text_model.train(was_training)
            self._matrix, self._key = torch.stack(rows), key
        return self._matrix
