"""Plugin discovery shared by the attack and defense registries: installed entry points by name (a name registered
twice keeps the first and warns), where one comes from, and loading one with its failure named."""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any


def entry_points_by_name(group: str, noun: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of ``group`` by name, sorted, without importing them; ``noun`` ("attack", "defense") names
    the kind in the warning about a name two distributions register (the first one found is kept)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"{noun} name {ep.name!r} is registered twice ({found[ep.name].value} and {ep.value}); "
                f"using {found[ep.name].value}",
                stacklevel=3,
            )
            continue
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def origin(ep: metadata.EntryPoint) -> str:
    """The entry point's target and, when known, the distribution that registers it."""
    dist = getattr(ep, "dist", None)
    where = f" from distribution {dist.name!r}" if dist is not None else ""
    return f"{ep.value!r}{where}"


def load_entry_point(name: str, ep: metadata.EntryPoint, noun: str) -> Any:
    """What ``ep`` names, imported; any failure while importing (``sys.exit()`` included) becomes an ImportError
    naming the ``noun`` plugin, where it comes from and why."""
    try:
        return ep.load()
    except (Exception, SystemExit) as exc:  # a plugin may fail in any way while importing
        reason = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise ImportError(f"{noun} plugin {name!r} ({origin(ep)}) failed to load: {reason}") from exc
