"""Backdoor defenses, their plugin registry and the built-in detectors and mitigations."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ARTActivationClustering": "art_adapters",
    "ARTSpectralSignatures": "art_adapters",
    "art_inputs": "art_adapters",
    "ARTPoisonFilter": "art_api",
    "ActivationClustering": "activation_clustering",
    "DECREE": "decree",
    "Defense": "base",
    "DetectionResult": "base",
    "EvaluationContext": "base",
    "InputScreen": "base",
    "MitigationResult": "base",
    "ModelVerdict": "base",
    "group_labels": "base",
    "FinePruning": "fine_pruning",
    "SCAn": "scan",
    "SpectralSignatures": "spectral",
    "SPECTRE": "spectre",
    "STRIP": "strip",
    "registry": "registry",
}


def __getattr__(name: str) -> Any:
    """Import an exported name's module (and with it torch) only when first used, so ``artmed defenses`` and the
    registry stay fast."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'artmed.defenses' has no attribute {name!r}")
    module = import_module(f"artmed.defenses.{_EXPORTS[name]}")
    return module if name == "registry" else getattr(module, name)


__all__ = [
    "ARTActivationClustering",
    "ARTPoisonFilter",
    "ARTSpectralSignatures",
    "ActivationClustering",
    "DECREE",
    "Defense",
    "DetectionResult",
    "EvaluationContext",
    "FinePruning",
    "InputScreen",
    "MitigationResult",
    "ModelVerdict",
    "SCAn",
    "SPECTRE",
    "STRIP",
    "SpectralSignatures",
    "art_inputs",
    "group_labels",
    "registry",
]
