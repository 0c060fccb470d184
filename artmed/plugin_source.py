"""Reading a plugin's description from its source without importing it (no torch: ``artmed defenses`` and
``artmed attacks`` list fast, and a plugin that fails to import still shows its parameters): the class node of an
entry point, an attribute looked up through its bases in the same module, and ``__init__``'s parameters with their
defaults as source text (a module constant by its value)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from importlib import metadata
from pathlib import Path


def entry_point_class(ep: metadata.EntryPoint) -> tuple[ast.Module, str, str] | None:
    """The parsed module, module name and class name an entry point names, or None where its source cannot be read
    (no source file, a target that is not a class name)."""
    module, _, attr = ep.value.partition(":")
    module, attr = module.strip(), attr.strip()
    tree = parse_module(module)
    if tree is None or not attr.isidentifier():
        return None
    return tree, module, attr


def classes_of(tree: ast.Module) -> dict[str, ast.ClassDef]:
    """The module's top-level classes by name."""
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def init_params(
    init: ast.FunctionDef, tree: ast.Module, module: str, skip: tuple[str, ...] = (), kwargs: bool = True
) -> dict[str, str]:
    """``__init__``'s parameters after ``self`` (name -> default as source text, "" where there is none; with
    ``kwargs``, a ``**kw`` as "**kw"), leaving out the names in ``skip``."""
    args = init.args
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    params = {
        arg.arg: "" if default is None else default_text(default, tree, module)
        for arg, default in pairs[1:]
        if arg.arg not in skip
    }
    if kwargs and args.kwarg is not None:
        params[f"**{args.kwarg.arg}"] = ""
    return params


def class_attribute(classes: dict[str, ast.ClassDef], name: str, attribute: str) -> ast.AST | None:
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


def default_text(default: ast.expr, tree: ast.Module, module: str) -> str:
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
            other = parse_module(source)
            return None if other is None else _constant(other, name, source, hops - 1)
    return None


def parse_module(module: str) -> ast.Module | None:
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
