"""Shared test settings: studies run serially unless a test asks for workers (``artmed run`` without ``--workers``
would start Ray processes on a multi-core machine; tests/test_engine.py covers that choice and the Ray path)."""

import pytest


@pytest.fixture(autouse=True)
def _serial_by_default(monkeypatch, request):
    if request.node.get_closest_marker("auto_workers") is None:
        monkeypatch.setattr("artmed.evaluations.harness.auto_workers", lambda config, threads: 1)
