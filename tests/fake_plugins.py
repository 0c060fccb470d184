"""Test-only defense plugins: register classes under entry-point names without installing a distribution."""

from artmed.defenses import registry
from artmed.defenses.base import Defense


class FakeEntryPoint:
    """Stands in for an installed entry point of a test-only defense class."""

    def __init__(self, name, cls):
        self.name, self.value, self.dist, self._cls = name, f"{__name__}:{name}", None, cls

    def load(self):
        return self._cls


def register(monkeypatch, **plugins):
    """Make ``registry.available`` list the installed defenses plus ``plugins`` (name -> class)."""
    installed = registry.available
    monkeypatch.setattr(
        registry, "available", lambda: {**installed(), **{n: FakeEntryPoint(n, c) for n, c in plugins.items()}}
    )


def plugin(run, kind="detection"):
    """A test plugin class of ``kind`` whose ``run(context)`` is ``run``."""
    return type(
        "Plugin",
        (Defense,),
        {"name": "plugin", "kind": kind, "_check_params": lambda self: None, "run": lambda self, context: run(context)},
    )
