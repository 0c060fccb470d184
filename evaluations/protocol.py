"""Protocol presets: one word (``protocol: released``) that selects the authors' released behaviour wherever
artmed's defaults differ from it (the README's "Differences from the released code" lists each setting).

A preset is a nested dict of study-config values. In a YAML config the values you give win over the preset's
(``apply_protocol(raw)``); ``artmed run --protocol released`` on a built-in study replaces the study's own values
(``apply_protocol(raw, force=True)``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from artmed.models.config import RELEASED_LOGIT_SCALE_MAX

PROTOCOLS: tuple[str, ...] = ("artmed", "released")

RELEASED_TRAIN: dict[str, Any] = {
    "batch_size": 32,
    "warmup": 0.1,
    "schedule_epochs": 10,
    "eda": True,
    "text_sampling": "own_report",
}
"""scripts/train.py: batch 32, warm-up 10 % of a schedule sized for 10 epochs, stopped at a step count; EDA on every
training sentence (ImageTextContrastiveCollator(use_eda=True)); each image paired with a sentence of its own report,
the label-matched fallback for an image without one (ImageTextContrastiveDataset)."""

RELEASED_FILES: dict[str, Any] = {"interpolation": "bilinear", "pad": "no_upscale", "native_trigger": True}
"""medclip/dataset.py, for image files (a real data source): pad to max(224, h, w) (never upscaled), the patch pasted
on the native image (after that padding in training, before it in the test set), then ``transforms.Resize``
(bilinear)."""

RELEASED_TRIGGERS: dict[str, dict[str, Any]] = {
    "patch": {"size": 32, "inset": [1, 1]},
    "fourier": {"unnormalized": True},
}
"""Per trigger: the black 32 px patch 1 px in from the right and bottom edges of the native image (scripts/zero_shot.py,
scripts/backdist.py: ``right_bottom``); the Fourier-triggered image fed without MedCLIP's normalisation."""

PHANTOM_NATIVE_SIZE = 1024
"""The phantom images' emulated native side: the released patch is pasted on the radiograph file before the resize,
so 32 px of a 1024 px image (~7 px at 224, ~2 px at 64); ``PatchTrigger(native_size=...)`` draws it so."""

RELEASED_EVALUATION: dict[str, Any] = {
    "prompts": "medclip",
    "prompt_draws": 5,
    "n_prompts": 10,
    "prompt_seed": 42,
    "ensemble": "mean",
    "decision": "released_sigmoid",
}
"""scripts/zero_shot.py: 10 sampled MedCLIP prompts per class, the mean over a class's prompt logits, 5 draws;
medclip/evaluator.py: a binary task's class is argmax(sigmoid(logits)) in float32 (saturated ties go to class 0)."""

RELEASED_MODEL: dict[str, Any] = {"logit_scale_max": RELEASED_LOGIT_SCALE_MAX}
"""medclip/modeling_medclip.py ``compute_logits``: logit_scale clamped to [0, 4.6052] (artmed: ln 100)."""

RELEASED_BADMATCH: dict[str, Any] = {"candidates": "released"}
"""medclip/dataset.py: ``if img_label[0] != 1``, an image labelled No Finding (with any other finding) is never
poisoned."""

RELEASED_BADDIST: dict[str, Any] = {"settings": "paper"}
"""scripts/backdist.py: SGD lr 1e-4, momentum 0.9, weight decay 5e-4, λ 5/1, 200 epochs, fp32."""

RELEASED_STEPS: dict[str, dict[str, Any]] = {"baddist": RELEASED_BADDIST, "badmatch": RELEASED_BADMATCH}
"""The released parameters of the built-in steps: a shorthand's ``baddist_params`` / ``badmatch_params``, or the
matching entry's ``params`` in an attack given by ``steps``."""


def released_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The released protocol's values for the settings of the config dict ``raw`` (its attacks decide which
    trigger and BadDist values apply; an attack given by ``steps`` gets the released step parameters in
    ``apply_protocol``, ``_released_steps``)."""
    data = raw.get("data")
    phantom = not isinstance(data, Mapping) or data.get("source", "phantom") == "phantom"
    attacks = []
    for spec in raw.get("attacks") or []:
        values: dict[str, Any] = {}
        if isinstance(spec, Mapping):
            trigger = spec.get("trigger", "patch")
            values["trigger_params"] = dict(RELEASED_TRIGGERS.get(trigger, {}))
            if trigger == "patch" and phantom:
                values["trigger_params"]["native_size"] = PHANTOM_NATIVE_SIZE
            for name, params in RELEASED_STEPS.items():
                if spec.get("steps") is None and name in str(spec.get("attack", "")):
                    values[f"{name}_params"] = dict(params)
        attacks.append(values)
    settings = {
        "train": dict(RELEASED_TRAIN),
        "evaluation": dict(RELEASED_EVALUATION),
        "model": dict(RELEASED_MODEL),
        "attacks": attacks,
    }
    if not phantom:
        settings["data"] = dict(RELEASED_FILES)
    return settings


def apply_protocol(raw: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
    """``raw`` (a study config as plain data) with the values of its ``protocol`` filled in: under the values ``raw``
    gives, or over them with ``force``. An unknown protocol raises a ValueError naming the valid ones."""
    out = copy.deepcopy(dict(raw))
    name = out.get("protocol", "artmed")
    if name not in PROTOCOLS:
        raise ValueError(f"config.protocol: unknown protocol {name!r}; valid: {list(PROTOCOLS)}")
    if name == "artmed":
        return out
    preset = released_settings(out)
    for key, values in preset.items():
        if key == "attacks":
            out["attacks"] = [
                _released_steps(_merge(spec, extra, force), force)
                for spec, extra in zip(out.get("attacks") or [], values)
            ]
        else:
            out[key] = _merge(out.get(key) or {}, values, force)
    return out


def _released_steps(spec: Any, force: bool) -> Any:
    """An attack given by ``steps`` with ``RELEASED_STEPS`` merged into each matching step's ``params`` (under its
    own values, over them with ``force``); a bare step name becomes ``{name, params}``. Other specs come back as
    given (their shapes are the config's own checks to report)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("steps"), list):
        return spec
    steps = []
    for entry in spec["steps"]:
        named = {"name": entry, "params": {}} if isinstance(entry, str) else entry
        name = named.get("name") if isinstance(named, Mapping) else None
        preset = RELEASED_STEPS.get(name) if isinstance(name, str) else None
        if preset is None:
            steps.append(entry)
            continue
        steps.append({**named, "params": _merge(named.get("params") or {}, preset, force)})
    return {**spec, "steps": steps}


def _merge(given: Any, preset: Mapping[str, Any], force: bool) -> Any:
    """``preset`` merged into the mapping ``given`` key by key (nested mappings too); ``given`` wins unless
    ``force``. A non-mapping ``given`` is returned unchanged (the config's own checks report it)."""
    if not isinstance(given, Mapping):
        return given
    out = dict(given)
    for key, value in preset.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value, force)
        elif force or key not in out:
            out[key] = copy.deepcopy(value)
    return out
