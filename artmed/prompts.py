"""Zero-shot class prompts: validation and the per-class prompt-ensemble text embedding, cached.

With ``ensemble="mean"`` (the default) a class's score is the mean over its prompts of ``scale * cos(image,
prompt)``, which equals ``scale * image · mean_p(prompt_p)`` with normalised embeddings, so one (K, D) matrix of mean
prompt embeddings serves every prediction. With ``ensemble="max"`` it is the max over its prompts of
``scale * cos(image, prompt)`` (MedCLIP's ``PromptClassifier(ensemble=False)``), from the (P, D) matrix of every
prompt's embedding. Both are recomputed whenever the text encoder's weights change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

from artmed.inputs import tokenize

ENSEMBLES: tuple[str, ...] = ("mean", "max")
"""How a class's prompt scores combine: their mean (MedCLIP's ``PromptClassifier(ensemble=True)``, the default of
its ``zero_shot.py``) or their max (``PromptClassifier``'s own default, ``ensemble=False``)."""


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


def check_ensemble(ensemble: Any) -> str:
    """``ensemble`` if it is one of ``ENSEMBLES``, else ValueError."""
    if not isinstance(ensemble, str) or ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    return ensemble


def text_weights_key(text_model: nn.Module) -> tuple[int, ...]:
    """A cheap fingerprint of the text encoder's weights: changes whenever any parameter is modified in place."""
    return (id(text_model), *(v for p in text_model.parameters() for v in (p.data_ptr(), p._version)))


@torch.no_grad()
def encode_sentences(
    model: nn.Module, tokenizer: Any, sentences: list[str], device: torch.device, batch_size: int, amp: bool = False
) -> torch.Tensor:
    """Normalised float32 text embeddings (M, D); all sentences padded together, so chunking changes nothing."""
    ids, mask = tokenize(tokenizer, sentences, device)
    chunks = []
    for start in range(0, ids.shape[0], batch_size):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            encode_text = cast(Callable[..., torch.Tensor], model.encode_text)
            emb = encode_text(ids[start : start + batch_size], mask[start : start + batch_size])
        chunks.append(torch.nn.functional.normalize(emb.float(), dim=-1))
    return torch.cat(chunks)


class PromptBank:
    """Holds the class prompts and their cached embeddings for one model: the (K, D) per-class means and, for
    ``ensemble="max"``, the (P, D) embeddings of every prompt (classes in order, each class's prompts together)."""

    def __init__(self, prompts: Mapping[str, list[str]], ensemble: str = "mean") -> None:
        self.prompts = check_prompts(prompts)
        self.ensemble = check_ensemble(ensemble)
        self._key: tuple[int, ...] | None = None
        self._matrix: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None

    @property
    def classes(self) -> list[str]:
        """Class names in prompt order."""
        return list(self.prompts)

    def clear(self) -> None:
        """Drop the cached embeddings."""
        self._key, self._matrix, self._rows = None, None, None

    def _encode(self, model: nn.Module, tokenizer: Any, device: torch.device, batch_size: int, amp: bool) -> None:
        text_model = cast(nn.Module, model.text_model)
        key = text_weights_key(text_model)
        if self._matrix is None or self._key != key or self._matrix.device != device:
            was_training = text_model.training
            text_model.eval()
            per_class = [encode_sentences(model, tokenizer, s, device, batch_size, amp) for s in self.prompts.values()]
            text_model.train(was_training)
            self._matrix, self._rows, self._key = torch.stack([e.mean(0) for e in per_class]), torch.cat(per_class), key

    def matrix(
        self, model: nn.Module, tokenizer: Any, device: torch.device, batch_size: int, amp: bool = False
    ) -> torch.Tensor:
        """(K, D) mean of each class's normalised prompt embeddings (each class's prompts padded together)."""
        self._encode(model, tokenizer, device, batch_size, amp)
        assert self._matrix is not None  # _encode sets it
        return self._matrix

    def embeddings(
        self, model: nn.Module, tokenizer: Any, device: torch.device, batch_size: int, amp: bool = False
    ) -> torch.Tensor:
        """(P, D) normalised embedding of every prompt, class after class in prompt order, encoded as for ``matrix``."""
        self._encode(model, tokenizer, device, batch_size, amp)
        assert self._rows is not None  # _encode sets it
        return self._rows

    def logits(
        self,
        image: torch.Tensor,
        scale: torch.Tensor,
        model: nn.Module,
        tokenizer: Any,
        device: torch.device,
        batch_size: int,
        amp: bool = False,
        ensemble: str | None = None,
    ) -> torch.Tensor:
        """Zero-shot logits (B, K) of normalised image embeddings (B, D): per class, the ``ensemble`` (default: this
        bank's) over its prompts of ``scale * cos(image, prompt)``."""
        ensemble = self.ensemble if ensemble is None else check_ensemble(ensemble)
        if ensemble == "mean":
            return scale * image @ self.matrix(model, tokenizer, device, batch_size, amp).T
        sims = scale * image @ self.embeddings(model, tokenizer, device, batch_size, amp).T
        return torch.stack(
            [part.max(dim=1).values for part in sims.split([len(s) for s in self.prompts.values()], dim=1)], dim=1
        )
