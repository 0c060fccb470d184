"""One place that turns a user's ``device`` setting into a torch device."""

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return ``cuda`` when ``device="auto"`` and a GPU is present, else the named device."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved
