"""Defense discovery through Python entry points (group "artmed.defenses"): built-ins and third-party plugins
register the same way, with one line in their package's pyproject::

    [project.entry-points."artmed.defenses"]
    my_defense = "my_package.module:MyDefense"
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from artmed.plugin_source import class_attribute, classes_of, entry_point_class, init_params
from artmed.plugins import entry_points_by_name, load_entry_point, origin
from artmed.suggest import did_you_mean

if TYPE_CHECKING:
    from artmed.defenses.base import Defense

GROUP = "artmed.defenses"
DATA_ARGS = ("classifier", "x_train", "y_train")
"""The data arguments of ART's detector API (``ARTPoisonFilter.__init__``): not parameters of the defense."""


def available() -> dict[str, metadata.EntryPoint]:
    """Installed defenses by name, without importing them (a broken plugin cannot break the listing).

    When two distributions register the same name, the first one found is kept and a warning names both.
    """
    return entry_points_by_name(GROUP, "defense")


def _load(name: str, ep: metadata.EntryPoint) -> type[Defense]:
    from artmed.defenses.base import Defense

    obj = load_entry_point(name, ep, "defense")
    if not (isinstance(obj, type) and issubclass(obj, Defense)):
        raise TypeError(f"defense plugin {name!r} ({origin(ep)}) is not a subclass of artmed.defenses.Defense")
    return obj


def get(name: str) -> type[Defense]:
    """The defense class registered as `name`; ValueError listing the installed names when there is none."""
    found = available()
    if name not in found:
        listed = ", ".join(found) or "none"
        raise ValueError(f"unknown defense {name!r}{did_you_mean(name, found)}; installed defenses: {listed}")
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


@dataclass(frozen=True)
class DefenseInfo:
    """What ``artmed defenses`` lists for one installed defense: its kind, class (dotted path), docstring and
    parameters (name -> default, as source text; "" where there is none)."""

    name: str
    kind: str
    target: str
    doc: str
    params: dict[str, str]


def describe_all(load: bool = False) -> tuple[list[DefenseInfo], dict[str, str]]:
    """Every installed defense described (ok, error message by name for those that failed), read from the plugins'
    source without importing them (no torch: fast), each class imported only where its source cannot be read that
    way (no source file, kind or ``__init__`` inherited from another module). A plugin that fails only when imported
    shows up as failed with `load` (every class imported: slow)."""
    infos: list[DefenseInfo] = []
    errors: dict[str, str] = {}
    for name, ep in available().items():
        try:
            info = None if load else _describe_static(name, ep)
        except (OSError, SyntaxError, ValueError, LookupError, ImportError):
            info = None
        if info is None:
            try:
                info = _describe_loaded(name, _load(name, ep))
            except (ImportError, TypeError) as exc:
                errors[name] = str(exc)
                continue
        infos.append(info)
    return infos, errors


def _describe_loaded(name: str, cls: type[Defense]) -> DefenseInfo:
    """The description of an imported defense class."""
    import inspect

    params = {
        p.name: "" if p.default is inspect.Parameter.empty else repr(p.default)
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name in cls.param_names() and p.name not in DATA_ARGS
    }
    return DefenseInfo(name, cls.kind, f"{cls.__module__}.{cls.__qualname__}", inspect.getdoc(cls) or "", params)


def _describe_static(name: str, ep: metadata.EntryPoint) -> DefenseInfo | None:
    """The description read from the plugin's source, or None where it does not say everything itself."""
    found = entry_point_class(ep)
    if found is None:
        return None
    tree, module, attr = found
    classes = classes_of(tree)
    kind = class_attribute(classes, attr, "kind")
    init = class_attribute(classes, attr, "__init__")
    if not (isinstance(kind, ast.Constant) and isinstance(kind.value, str) and isinstance(init, ast.FunctionDef)):
        return None
    params = init_params(init, tree, module, skip=DATA_ARGS, kwargs=False)
    return DefenseInfo(name, kind.value, f"{module}.{attr}", ast.get_docstring(classes[attr]) or "", params)
