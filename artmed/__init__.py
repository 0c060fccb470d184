"""artmed: backdoor attacks and defenses for medical vision-language models, on top of ART."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["MedCLIPEstimator", "__version__"]


def __getattr__(name: str) -> Any:
    """Import ``MedCLIPEstimator`` (and with it torch and ART) only when first used, so ``import artmed`` is fast."""
    if name == "MedCLIPEstimator":
        from artmed.estimator import MedCLIPEstimator

        return MedCLIPEstimator
    raise AttributeError(f"module 'artmed' has no attribute {name!r}")
