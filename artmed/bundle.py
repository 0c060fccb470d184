"""Save and load a whole ``MedCLIPEstimator`` as one directory: weights, model config, tokenizer and prompts.

Layout: ``model.safetensors`` (released key names), ``estimator.json`` (model config, prompts, settings, the text
pool if set) and ``tokenizer/`` (``vocab.txt``). Loading unpickles nothing: JSON, safetensors and a vocabulary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from artmed import __version__
from artmed.files import staged_directory

BUNDLE_FILE = "estimator.json"


def _model_config(data: Any) -> Any:
    """The ``MedCLIPConfig`` of ``estimator.json``: ``artmed.models.config``'s format, or the older one that tagged the
    vision encoder's kind at the top (``vision_kind``); ValueError naming the file on bad fields."""
    from artmed.models.config import config_from_dict

    if not isinstance(data, dict):
        raise ValueError(f"{BUNDLE_FILE}: model must be a mapping, got {type(data).__name__}")
    data = dict(data)
    if "vision_kind" in data and isinstance(data.get("vision"), dict):
        data["vision"] = {**data["vision"], "type": data.pop("vision_kind")}
    try:
        return config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{BUNDLE_FILE}: invalid model config ({err})") from err


def save_bundle(estimator: Any, directory: str | os.PathLike[str]) -> Path:
    """Write ``estimator`` as the folder ``directory``; return the directory.

    The folder is written beside ``directory`` and renamed into place when complete, so a crash leaves the previous
    folder or none, never a torn model. An existing ``directory`` is replaced only if it is an estimator folder,
    or holds nothing but what one holds (empty, or torn by an older writer); otherwise ValueError, as its files
    would be lost.
    """
    from artmed.models import save_medclip, save_tokenizer
    from artmed.models.config import config_to_dict

    out = Path(directory)
    if not _replaceable(out):
        raise ValueError(
            f"{str(out)!r} exists and is not an estimator directory (no {BUNDLE_FILE}); refusing to replace it"
        )
    meta = {
        "artmed_version": __version__,
        "model": config_to_dict(estimator.model.config),
        "prompts": estimator.prompts,
        "input_shape": list(estimator.input_shape),
        "batch_size": estimator.batch_size,
        "clip_values": [float(v) for v in estimator.clip_values],
        "amp": estimator.amp,
        "output": estimator.output,
        "ensemble": estimator.ensemble,
        "decision": estimator.decision,
    }
    if estimator.texts is not None:
        meta["text_pool"] = {"texts": estimator.texts, "labels": estimator.text_labels.astype(int).tolist()}
    with staged_directory(out) as staging:
        save_medclip(estimator.model, staging)
        save_tokenizer(estimator.tokenizer, staging / "tokenizer")
        (staging / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _replaceable(out: Path) -> bool:
    """Whether ``save_bundle`` may replace ``out``: absent, an estimator folder, or one holding only bundle parts."""
    from artmed.models.checkpoint import CONFIG_NAME

    if not out.exists():
        return True
    if not out.is_dir():
        return False
    entries = {p.name for p in out.iterdir()}
    return BUNDLE_FILE in entries or entries <= {"model.safetensors", CONFIG_NAME, "tokenizer"}


def load_bundle(
    cls: type, directory: str | os.PathLike[str], device: str | torch.device = "auto", **overrides: Any
) -> Any:
    """An estimator of class ``cls`` from a directory written by ``save_bundle``; ``overrides`` replace settings."""
    from artmed.models import MedCLIPModel, load_tokenizer
    from artmed.models.checkpoint import read_state_dict, validate_state_dict

    path = Path(directory)
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise ValueError(f"{str(path)!r} is not an estimator directory (no {BUNDLE_FILE})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_file}: not valid JSON ({err})") from err
    for field in ("model", "prompts", "input_shape"):
        if field not in meta:
            raise ValueError(f"{meta_file}: missing field {field!r}")
    model = MedCLIPModel(_model_config(meta["model"]))
    state = validate_state_dict(model, read_state_dict(path / "model.safetensors"), source=str(path))
    model.load_state_dict(state)
    settings = {
        "input_shape": tuple(meta["input_shape"]),
        "batch_size": meta.get("batch_size", 64),
        "clip_values": tuple(meta.get("clip_values", (0.0, 1.0))),
        "amp": meta.get("amp", True),
        "output": meta.get("output", "probabilities"),
        "ensemble": meta.get("ensemble", "mean"),
        "decision": meta.get("decision", "argmax"),
        "device": device,
    }
    if "text_pool" in meta:
        settings["texts"] = meta["text_pool"].get("texts")
        settings["text_labels"] = meta["text_pool"].get("labels")
    settings.update(overrides)
    return cls(model, load_tokenizer(path / "tokenizer"), meta["prompts"], **settings)
