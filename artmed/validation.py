"""Checks for settings read from config files, each error naming the field: typed dataclass fields (numbers written
as strings converted, NaN and infinity refused, bools and fractions are not integers), constructor parameters, and
output locations. Shared by the study config (``artmed.evaluations.config``) and ``AttackSpec``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from artmed.suggest import did_you_mean_each

__all__ = ["FieldError", "blame", "check_fields", "check_names", "check_writable", "coerce"]


class FieldError(ValueError):
    """A bad setting. The message starts with the field's dotted path relative to the object checked, so an
    enclosing config can prefix it (``lr must ...`` -> ``config.train.lr must ...``)."""

    def under(self, prefix: str) -> FieldError:
        """The same error with ``prefix`` before the field's path."""
        return FieldError(f"{prefix}.{self}")


_KINDS = {str: "a string", bool: "true or false", dict: "a mapping", list: "a list"}


def coerce(value: Any, declared: Any, field: str) -> Any:
    """``value`` as the declared type (``int``, ``float``, ``str``, ``bool``, ``dict[...]``, ``list[X]``, a class,
    ``X | None``), or a FieldError naming ``field``. Numbers written as strings are converted ("1e-3" -> 0.001,
    "160" -> 160); NaN, infinity and bools are refused as numbers, fractions as integers (2.0 is taken as 2)."""
    if typing.get_origin(declared) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(declared):
            return None
        (declared,) = [t for t in typing.get_args(declared) if t is not type(None)]
    if declared in (int, float):
        return _number(value, declared, field)
    kind = typing.get_origin(declared) or declared
    if not isinstance(value, kind):
        raise FieldError(f"{field} must be {_KINDS.get(kind, f'an instance of {kind.__name__}')}, got {value!r}")
    if kind is list:
        (item,) = typing.get_args(declared)
        return [coerce(v, item, f"{field}[{i}]") for i, v in enumerate(value)]
    return value


def _number(value: Any, kind: type[int] | type[float], field: str) -> int | float:
    what = "an integer" if kind is int else "a number"
    number: Any = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise FieldError(f"{field} must be {what}, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldError(f"{field} must be {what}, got {value!r}")
    if not math.isfinite(number):
        raise FieldError(f"{field} must be finite, got {value!r}")
    if kind is float:
        return float(number)
    if not float(number).is_integer():
        raise FieldError(f"{field} must be an integer, got {value!r}")
    return int(number)


@functools.cache
def _declared(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_fields(obj: Any) -> None:
    """Set every field of the dataclass instance ``obj`` to its value as the declared type (see ``coerce``)."""
    cls: type = type(obj)
    for name, declared in _declared(cls).items():
        setattr(obj, name, coerce(getattr(obj, name), declared, name))


def check_names(
    target: Callable[..., Any], params: dict[str, Any], field: str, owner: str, fixed: Collection[str] = ()
) -> None:
    """A FieldError naming ``field`` when ``params`` has a key that ``target`` takes by no keyword (``fixed``: those
    the caller passes itself). A ``target`` taking ``**kwargs`` accepts every name."""
    parameters = inspect.signature(target).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed]
    unknown = [name for name in params if name not in valid]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        hint = did_you_mean_each(unknown, valid)
        raise FieldError(
            f"{field}: unknown parameter{'s' if len(unknown) > 1 else ''} {listed} for {owner}; valid: {valid}{hint}"
        )


@contextmanager
def blame(field: str) -> Iterator[None]:
    """Re-raise a ValueError or TypeError from inside (a constructor refusing a value) as a FieldError naming
    ``field``."""
    try:
        yield
    except FieldError:
        raise
    except (TypeError, ValueError) as exc:
        raise FieldError(f"{field}: {exc}") from exc


def check_writable(path: str | Path, what: str, folder: bool) -> None:
    """A ValueError unless ``path`` can be written as a folder (``folder``; it may exist) or as a file, checked
    without creating anything: it is not the other kind, and its nearest existing ancestor is a writable folder."""
    path = Path(path).absolute()
    if path.exists() and path.is_dir() != folder:
        raise ValueError(
            f"{what} {path} is a {'file' if folder else 'folder'}; it must be a {'folder' if folder else 'file'}"
        )
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot create {what} {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {path}: no write permission in {existing}")
