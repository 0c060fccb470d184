"""Defense discovery through Python entry points (group "artmed.defenses"): built-ins and third-party plugins
register the same way, with one line in their package's pyproject::

    [project.entry-points."artmed.defenses"]
    my_defense = "my_package.module:MyDefense"
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    module, _, attr = ep.value.partition(":")
    attr = attr.strip()
    tree = _parse(module.strip())
    if tree is None or not attr.isidentifier():
        return None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    kind = _class_attribute(classes, attr, "kind")
    init = _class_attribute(classes, attr, "__init__")
    if not (isinstance(kind, ast.Constant) and isinstance(kind.value, str) and isinstance(init, ast.FunctionDef)):
        return None
    args = init.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    params = {
        arg.arg: "" if default is None else _default_text(default, tree, module)
        for arg, default in pairs[1:]
        if arg.arg not in DATA_ARGS
    }
    return DefenseInfo(name, kind.value, f"{module.strip()}.{attr}", ast.get_docstring(classes[attr]) or "", params)


def _class_attribute(classes: dict[str, ast.ClassDef], name: str, attribute: str) -> ast.AST | None:
    """The value node of `attribute` (an assignment, or a def) in class `name` or the bases it names in the same
    module, looked up in method resolution order for single inheritance; None where it is not found there."""
    node = classes.get(name)
    while node is not None:
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == attribute:
                return stmt
            targets = (
                stmt.targets
                if isinstance(stmt, ast.Assign)
                else [stmt.target]
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None
                else []
            )
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and any(  # targets: only an assignment has them
                isinstance(t, ast.Name) and t.id == attribute for t in targets
            ):
                return stmt.value
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        node = classes.get(bases[0]) if bases else None
    return None


def _default_text(default: ast.expr, tree: ast.Module, module: str) -> str:
    """A default as source text, a module constant (defined there or imported from another module) as its value."""
    if isinstance(default, ast.Name):
        value = _constant(tree, default.id, module)
        if value is not None:
            return value
    return ast.unparse(default)


def _constant(tree: ast.Module, name: str, module: str, hops: int = 1) -> str | None:
    """The repr of module constant `name` (a literal assigned at the top of `tree`, or imported by
    ``from X import name`` and a literal there), or None."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            try:
                return repr(ast.literal_eval(stmt.value))
            except ValueError:
                return None
        if (
            isinstance(stmt, ast.ImportFrom)
            and hops > 0
            and any((alias.asname or alias.name) == name and alias.name == name for alias in stmt.names)
        ):
            source = (
                importlib.util.resolve_name("." * stmt.level + (stmt.module or ""), module)
                if stmt.level
                else (stmt.module or "")
            )
            other = _parse(source)
            return None if other is None else _constant(other, name, source, hops - 1)
    return None


def _parse(module: str) -> ast.Module | None:
    """The syntax tree of `module`'s source file, found without importing it or its packages; None where it has
    none (a built-in or compiled module)."""
    path: list[str] | None = None
    spec = None
    parts = module.split(".")
    for i in range(len(parts)):
        fullname = ".".join(parts[: i + 1])
        loaded = sys.modules.get(fullname)
        spec = getattr(loaded, "__spec__", None) if loaded is not None else None
        if spec is None:
            spec = next(
                (
                    found
                    for finder in sys.meta_path
                    if hasattr(finder, "find_spec")
                    for found in [finder.find_spec(fullname, path)]
                    if found is not None
                ),
                None,
            )
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    return ast.parse(Path(origin).read_text(encoding="utf-8"), filename=origin)
