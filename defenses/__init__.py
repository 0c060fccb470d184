"""Backdoor defenses, their plugin registry and the built-in detectors and mitigations."""
