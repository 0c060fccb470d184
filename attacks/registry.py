"""Attack-step discovery through Python entry points (group "artmed.attacks"), as defenses are discovered: built-ins
and third-party plugins register the same way, with one line in their package's pyproject::

    [project.entry-points."artmed.attacks"]
    my_step = "my_package.module:MyStep"
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from artmed.plugin_source import classes_of, entry_point_class, init_params
from artmed.plugins import entry_points_by_name, load_entry_point, origin
from artmed.suggest import did_you_mean

if TYPE_CHECKING:
    from artmed.attacks.steps import AttackStep

GROUP = "artmed.attacks"
SHORTHANDS: dict[str, tuple[str, ...]] = {
    "clean": (),
    "badmatch": ("badmatch",),
    "baddist": ("baddist",),
    "baddist_badmatch": ("baddist", "badmatch"),
}
"""The seed paper's four settings as compositions of the built-in steps (an ``AttackSpec``'s ``attack``)."""
KINDS_BY_BASE = {"SupplyChainStep": "supply_chain", "DataStep": "data"}
"""A step's kind by the base class it names (``artmed.attacks.steps``), for describing it without importing it."""


def available() -> dict[str, metadata.EntryPoint]:
    """Installed attack steps by name, without importing them (a broken plugin cannot break the listing).

    When two distributions register the same name, the first one found is kept and a warning names both.
    """
    return entry_points_by_name(GROUP, "attack")


def _load(name: str, ep: metadata.EntryPoint) -> type[AttackStep]:
    from artmed.attacks.steps import STEP_KINDS, AttackStep

    obj = load_entry_point(name, ep, "attack")
    if not (isinstance(obj, type) and issubclass(obj, AttackStep)):
        raise TypeError(f"attack plugin {name!r} ({origin(ep)}) is not a subclass of artmed.attacks.steps.AttackStep")
    if getattr(obj, "kind", None) not in STEP_KINDS:
        raise TypeError(
            f"attack plugin {name!r} ({origin(ep)}) declares kind {getattr(obj, 'kind', None)!r}; "
            f"valid kinds: {list(STEP_KINDS)} (subclass SupplyChainStep or DataStep)"
        )
    return obj


def get(name: str) -> type[AttackStep]:
    """The step class registered as `name`; ValueError listing the installed names when there is none."""
    found = available()
    if name not in found:
        raise ValueError(
            f"unknown attack step {name!r}{did_you_mean(name, found)}; installed attack steps: "
            f"{', '.join(found) or 'none'}"
        )
    return _load(name, found[name])


def create(name: str, **params: Any) -> AttackStep:
    """An instance of the step registered as `name`, built with `params`."""
    return get(name)(**params)


def load_all() -> tuple[dict[str, type[AttackStep]], dict[str, str]]:
    """Every installed step loaded: (classes by name, error message by name for those that failed)."""
    classes: dict[str, type[AttackStep]] = {}
    errors: dict[str, str] = {}
    for name, ep in available().items():
        try:
            classes[name] = _load(name, ep)
        except (ImportError, TypeError) as exc:
            errors[name] = str(exc)
    return classes, errors


@dataclass(frozen=True)
class StepInfo:
    """What ``artmed attacks`` lists for one installed step: its kind, class (dotted path), docstring and parameters
    (name -> default as source text, "" where there is none; ``**name`` for a catch-all)."""

    name: str
    kind: str
    target: str
    doc: str
    params: dict[str, str]


def describe_all() -> tuple[list[StepInfo], dict[str, str]]:
    """Every installed step described (ok, error message by name for those that failed), read from the plugins'
    source without importing them (no torch: fast); a class is imported only where its source does not say its kind
    and ``__init__`` itself."""
    infos: list[StepInfo] = []
    errors: dict[str, str] = {}
    for name, ep in available().items():
        try:
            info = _describe_static(name, ep)
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


def _describe_loaded(name: str, cls: type[AttackStep]) -> StepInfo:
    """The description of an imported step class."""
    params = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            params[f"**{p.name}"] = ""
        elif p.name != "self" and p.kind is not p.VAR_POSITIONAL:
            params[p.name] = "" if p.default is p.empty else repr(p.default)
    return StepInfo(name, cls.kind, f"{cls.__module__}.{cls.__qualname__}", inspect.getdoc(cls) or "", params)


def _describe_static(name: str, ep: metadata.EntryPoint) -> StepInfo | None:
    """The description read from the plugin's source, or None where it does not say everything itself (as
    ``artmed.defenses.registry`` reads defenses)."""
    found = entry_point_class(ep)
    if found is None:
        return None
    tree, module, attr = found
    node = classes_of(tree).get(attr)
    if node is None:
        return None
    init = next((stmt for stmt in node.body if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__"), None)
    bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
    kind = next((KINDS_BY_BASE[b] for b in bases if b in KINDS_BY_BASE), None)
    if init is None or kind is None:
        return None
    return StepInfo(name, kind, f"{module}.{attr}", ast.get_docstring(node) or "", init_params(init, tree, module))
