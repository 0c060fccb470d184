"""Backdoor defenses, their plugin registry and the built-in detectors and mitigations."""

from artmed.defenses import registry
from artmed.defenses.activation_clustering import ActivationClustering
from artmed.defenses.art_adapters import ARTActivationClustering, ARTSpectralSignatures, art_inputs
from artmed.defenses.art_api import ARTPoisonFilter
from artmed.defenses.base import (
    Defense,
    DetectionResult,
    EvaluationContext,
    InputScreen,
    MitigationResult,
    ModelVerdict,
    group_labels,
)
from artmed.defenses.decree import DECREE
from artmed.defenses.fine_pruning import FinePruning
from artmed.defenses.scan import SCAn
from artmed.defenses.spectral import SpectralSignatures
from artmed.defenses.spectre import SPECTRE
from artmed.defenses.strip import STRIP

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
