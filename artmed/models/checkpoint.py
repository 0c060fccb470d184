"""Safe MedCLIP checkpoint I/O: ``weights_only`` / safetensors loading with key and shape validation.

Checkpoints are untrusted input (a pickle can run code): nothing is unpickled beyond tensors, and any missing key,
unexpected key or shape mismatch is reported in one ValueError before a single weight is copied; so are weights
holding NaN or inf (a diverged or corrupted model would otherwise score as garbage).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors.torch import load_file, save_file

from artmed.files import atomic_file
from artmed.models.config import PRESETS, MedCLIPConfig, config_from_dict, config_to_dict
from artmed.models.medclip import MedCLIPModel, build_medclip

__all__ = [
    "CONFIG_NAME",
    "check_finite_weights",
    "load_medclip",
    "released_state_dict",
    "save_medclip",
    "save_released",
    "read_state_dict",
    "validate_state_dict",
]

CONFIG_NAME = "medclip_config.json"
_WORD_EMBEDDINGS = "text_model.model.embeddings.word_embeddings.weight"
_MAX_LISTED = 20
_MAX_NONFINITE = 5
_RELEASED_BUFFERS = ("embeddings.position_ids", "relative_position_index")
"""The recomputed buffers the 2022 release stored (transformers 4.x persisted them); ``token_type_ids`` it did not."""


def _checkpoint_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if (path / "pytorch_model.bin").is_file():
        return path / "pytorch_model.bin"
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ValueError(
            f"checkpoint directory {str(path)!r} holds several .safetensors files "
            f"({', '.join(c.name for c in candidates)}); point at one of them"
        )
    raise ValueError(
        f"checkpoint directory {str(path)!r} holds no pytorch_model.bin, model.safetensors or other *.safetensors file"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or directory: safetensors, or ``torch.load(weights_only=True)``."""
    file = _checkpoint_file(Path(path))
    if file.suffix == ".safetensors":
        try:
            return load_file(str(file))
        except Exception as err:
            raise ValueError(f"{file}: not a readable safetensors file ({err})") from err
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{file}: refused to load (only plain tensors are accepted with weights_only=True): {err}"
        ) from err
    return _unwrapped(state, file)


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
"""Keys under which training scripts commonly store the weights beside ``epoch``, ``optimizer`` ... ."""


def _tensors(value: object) -> TypeGuard[dict[Any, torch.Tensor]]:
    """Whether ``value`` is a non-empty dict of tensors (a state dict)."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrapped(state: object, file: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded torch file: the file itself, or the dict of tensors under one of ``_WRAPPER_KEYS``
    (``{'model': sd, 'epoch': 3}``; a warning names the key used and the entries left out)."""
    if _tensors(state):
        return dict(state)
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a dict of tensors (a state dict), got {type(state).__name__}")
    for key in _WRAPPER_KEYS:
        if _tensors(state.get(key)):
            others = sorted(str(k) for k in state if k != key)
            warnings.warn(
                f"{file}: using the weights under the {key!r} entry of the checkpoint"
                + (f" (left out: {', '.join(others)})" if others else ""),
                stacklevel=3,
            )
            return dict(state[key])
    nested = sorted(str(k) for k, v in state.items() if _tensors(v))
    hint = (
        f"; the tensors are under {nested}: save that entry alone (torch.save(ckpt[{nested[0]!r}], path))"
        if nested
        else f"; its entries are {sorted(map(str, state))[:_MAX_LISTED]}"
    )
    raise ValueError(f"{file}: expected a dict of tensors (a state dict) or one under {list(_WRAPPER_KEYS)}{hint}")


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"{title} ({len(items)}): " + ", ".join(shown) + more


def validate_state_dict(
    model: MedCLIPModel, state_dict: dict[str, torch.Tensor], source: str = "checkpoint", strict: bool = True
) -> dict[str, torch.Tensor]:
    """The state dict with legacy buffers checked and dropped; ValueError listing every key/shape problem.

    Legacy buffers (``position_ids``, Swin ``relative_position_index`` ...) that older transformers saved are
    accepted only if they equal what the architecture computes. With ``strict=False`` missing and unexpected
    keys are tolerated (shape mismatches never are). Weights holding NaN or inf are refused too.
    """
    legacy = model.legacy_buffers()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems: list[str] = []
    kept: dict[str, torch.Tensor] = {}
    bad_legacy: list[str] = []
    for key, value in state_dict.items():
        if key in legacy and key not in expected:
            reference = legacy[key]
            if tuple(value.shape) != tuple(reference.shape) or not torch.equal(value.to(reference.dtype), reference):
                bad_legacy.append(
                    f"{key} (shape {list(value.shape)}, expected the fixed buffer of shape {list(reference.shape)})"
                )
            continue
        kept[key] = value
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {list(kept[k].shape)}, model {list(expected[k])})"
        for k in set(kept) & set(expected)
        if tuple(kept[k].shape) != expected[k]
    )
    if strict and missing:
        problems.append(_listing("missing keys", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    if bad_legacy:
        problems.append(_listing("legacy buffers that differ from the architecture's", bad_legacy))
    if problems:
        raise ValueError(f"{source} does not fit the {type(model).__name__}:\n  " + "\n  ".join(problems))
    kept = {k: v for k, v in kept.items() if k in expected}
    check_finite_weights(kept, source)
    return kept


def check_finite_weights(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """ValueError naming the first few (sorted) tensors of ``state_dict`` that hold NaN or inf, and how many do."""
    bad = sorted(
        k
        for k, v in state_dict.items()
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())
    )
    if bad:
        shown = ", ".join(bad[:_MAX_NONFINITE]) + (", ..." if len(bad) > _MAX_NONFINITE else "")
        raise ValueError(f"{source} has non-finite values (NaN or inf) in {len(bad)} tensor(s): {shown}")


def _model_for(variant: str | MedCLIPConfig, path: Path, state_dict: dict[str, torch.Tensor]) -> MedCLIPModel:
    if isinstance(variant, MedCLIPConfig):
        return MedCLIPModel(variant)
    if variant == "auto":
        config_file = (path if path.is_dir() else path.parent) / CONFIG_NAME
        if not config_file.is_file():
            raise ValueError(f"variant='auto' needs {CONFIG_NAME} beside the weights; none at {str(config_file)!r}")
        try:
            data = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file}: not valid JSON ({err})") from err
        return MedCLIPModel(config_from_dict(data))
    vocab_size = None
    if variant == "tiny" and _WORD_EMBEDDINGS in state_dict:
        vocab_size = int(state_dict[_WORD_EMBEDDINGS].shape[0])
    return build_medclip(variant, vocab_size=vocab_size)


def load_medclip(
    path: str | os.PathLike[str], variant: str | MedCLIPConfig = "resnet50", strict: bool = True
) -> MedCLIPModel:
    """A MedCLIP with weights from ``path``, in eval mode.

    ``path``: a directory holding ``model.safetensors`` (preferred), ``pytorch_model.bin`` or a single other
    ``*.safetensors`` file, or the file itself (safetensors, or a torch file read with ``weights_only=True``).
    ``variant``: "resnet50" or "swin_tiny" (released architectures), "tiny" (vocabulary size taken from the
    checkpoint), a ``MedCLIPConfig``, or "auto" (the config ``save_medclip`` wrote).
    Raises ValueError naming every missing/unexpected key and shape mismatch, or the tensors holding NaN/inf.
    """
    if not isinstance(variant, MedCLIPConfig) and variant not in (*PRESETS, "auto"):
        raise ValueError(f"variant must be one of {sorted(PRESETS)}, 'auto' or a MedCLIPConfig, got {variant!r}")
    state_dict = read_state_dict(path)
    model = _model_for(variant, Path(path), state_dict)
    state_dict = validate_state_dict(model, state_dict, source=str(path), strict=strict)
    model.load_state_dict(state_dict, strict=strict)
    return model.eval()


def save_medclip(model: MedCLIPModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` (released key names) and its config into ``out_dir``; return the weights file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file = out / "model.safetensors"
    with atomic_file(file) as tmp:  # a full disk leaves the previous weights, never a truncated file
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_file(out / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n", encoding="utf-8")
    return file


def released_state_dict(model: MedCLIPModel) -> dict[str, torch.Tensor]:
    """Every weight and buffer under the released MedCLIP names, plus the buffers the release stored that this
    model recomputes (BERT's ``position_ids``, Swin's ``relative_position_index``): the key set a strict
    ``load_state_dict`` in the authors' MedCLIP code expects. Detached, on the model's device."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state.update({k: v.detach() for k, v in model.legacy_buffers().items() if k.endswith(_RELEASED_BUFFERS)})
    return state


def save_released(model: MedCLIPModel, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``pytorch_model.bin`` as the released checkpoints are (``torch.save`` of ``released_state_dict``), for
    the authors' MedCLIP code (``MedCLIPModel.from_pretrained`` / a strict ``load_state_dict``) or ``load_medclip``;
    return the file. Use it to hand a BadDist-backdoored encoder to code that reads only the released format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file = out / "pytorch_model.bin"
    with atomic_file(file) as tmp:  # a full disk leaves the previous checkpoint, never a truncated one
        torch.save({k: v.cpu().contiguous() for k, v in released_state_dict(model).items()}, tmp)
    return file
