"""Defense discovery through Python entry points (group "artmed.defenses"): built-ins and third-party plugins
register the same way, with one line in their package's pyproject::

    [project.entry-points."artmed.defenses"]
    my_defense = "my_package.module:MyDefense"
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any

from artmed.defenses.base import Defense

GROUP = "artmed.defenses"


def available() -> dict[str, metadata.EntryPoint]:
    """Installed defenses by name, without importing them (a broken plugin cannot break the listing).

    When two distributions register the same name, the first one found is kept and a warning names both.
    """
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"defense name {ep.name!r} is registered twice ({found[ep.name].value} and {ep.value}); "
                f"using {found[ep.name].value}",
                stacklevel=2,
            )
            continue
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def _origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from distribution {dist.name!r}" if dist is not None else ""
    return f"{ep.value!r}{where}"


def _load(name: str, ep: metadata.EntryPoint) -> type[Defense]:
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:  # a plugin may fail in any way while importing, sys.exit() included
        reason = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise ImportError(f"defense plugin {name!r} ({_origin(ep)}) failed to load: {reason}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise TypeError(f"defense plugin {name!r} ({_origin(ep)}) is not a subclass of artmed.defenses.Defense")
    return obj


def get(name: str) -> type[Defense]:
    """The defense class registered as `name`; ValueError listing the installed names when there is none."""
    found = available()
    if name not in found:
        listed = ", ".join(found) or "none"
        raise ValueError(f"unknown defense {name!r}; installed defenses: {listed}")
    return _load(name, found[name])


def create(name: str, **params: Any) -> Defense:
    """An instance of the defense registered as `name`, built with `params`."""
    return get(name)(**params)


def load_all() -> tuple[dict[str, type[Defense]], dict[str, str]]:
    """Every installed defense loaded: (classes by name, error message by name for those that failed)."""
    classes: dict[str, type[Defense]] = {}
    errors: dict[str, str] = {}
    for name, ep in available().items():
        try:
            classes[name] = _load(name, ep)
        except (ImportError, TypeError) as exc:
            errors[name] = str(exc)
    return classes, errors
