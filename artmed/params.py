"""One parameter contract for artmed's configurable objects (triggers, defenses): declarative checks and a mixin.

A class lists its parameters in ``__init__``, stores each one unchanged under its own name (validate, don't convert:
``get_params`` gives back exactly what was passed; a conversion needed for computation is done where the value is
used), and checks them all in one ``_check_params``. Declarative rules cover the usual cases::

    class STRIP(Params):
        param_rules = {"n_superimpose": Int(1), "alpha": Real(0, 1, "()"), "seed": OrNone(Int(0)),
                       "mode": Choice(("fast", "exact")), "verbose": Bool(), "layer": Text()}

        def _check_params(self):
            self.check_rules()          # every rule of param_rules, in order
            ...                         # checks across parameters, by hand

A refused value raises ValueError naming the parameter, what it must be, the value and the class
(:meth:`Params.param_error`). :class:`Params` gives ``get_params()`` (the ``__init__`` parameters and their current
values) and ``set_params(**kwargs)`` with ART's semantics, all-or-nothing: unknown names raise ValueError naming them,
the values are set and ``_check_params`` re-runs; when it refuses, every value is restored. After a successful
``set_params`` the object's ``_params_changed`` hook runs (e.g. a trigger drops patterns cached for the old values).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from artmed.suggest import did_you_mean_each

__all__ = [
    "Bool",
    "Check",
    "Choice",
    "Int",
    "Items",
    "OrNone",
    "Params",
    "Real",
    "Rule",
    "Text",
    "check",
    "is_int",
    "is_real",
]


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy); bools and integral floats (2.0) are not."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A real number (Python or NumPy int or float, NaN and infinity included); bools are not."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Rule:
    """A check of one value: ``accepts(value)``, and ``what`` it must be (the phrase after "must be")."""

    text: str | None = None

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    @property
    def what(self) -> str:
        return self.text if self.text is not None else self._what()

    def _what(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Rule):
    """An integer (not a bool, not 2.0) in [low, high]; either bound may be None (open-ended)."""

    low: int | None = None
    high: int | None = None
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def _what(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer in [{self.low}, {self.high}]"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return "an integer" if self.high is None else f"an integer <= {self.high}"


@dataclass(frozen=True)
class Real(Rule):
    """A finite real number (not a bool) between ``low`` and ``high`` (None: unbounded on that side). ``bounds``
    says which ends are included, as in interval notation: "[]" (default), "(]", "[)" or "()"."""

    low: float | None = None
    high: float | None = None
    bounds: str = "[]"
    text: str | None = None

    def __post_init__(self) -> None:
        if self.bounds not in ("[]", "(]", "[)", "()"):
            raise ValueError(f"Real bounds must be one of '[]', '(]', '[)', '()', got {self.bounds!r}")

    def accepts(self, value: Any) -> bool:
        if not is_real(value) or not math.isfinite(value):
            return False
        if self.low is not None and not (value > self.low if self.bounds[0] == "(" else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.bounds[1] == ")" else value <= self.high)

    def _what(self) -> str:
        if self.low is not None and self.high is not None:
            return f"a number in {self.bounds[0]}{_num(self.low)}, {_num(self.high)}{self.bounds[1]}"
        if self.low is not None:
            if self.bounds[0] == "(":
                return "a positive number" if self.low == 0 else f"a number > {_num(self.low)}"
            return f"a number >= {_num(self.low)}"
        if self.high is not None:
            return f"a number {'<' if self.bounds[1] == ')' else '<='} {_num(self.high)}"
        return "a finite number"


@dataclass(frozen=True)
class Choice(Rule):
    """One of ``options`` (compared by type and value: True is not 1, an array never matches)."""

    options: tuple[Any, ...]
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return any(
            value is o or (isinstance(value, type(o)) and isinstance(value, bool) == isinstance(o, bool) and value == o)
            for o in self.options
        )

    def _what(self) -> str:
        return f"one of {self.options}"


@dataclass(frozen=True)
class Bool(Rule):
    """True or False (a NumPy bool too)."""

    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def _what(self) -> str:
        return "a bool"


@dataclass(frozen=True)
class Text(Rule):
    """A non-empty string."""

    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def _what(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class OrNone(Rule):
    """None, or a value ``rule`` accepts."""

    rule: Rule
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def _what(self) -> str:
        return f"{self.rule.what} or None"


@dataclass(frozen=True)
class Items(Rule):
    """A tuple or list of ``length`` values, each accepted by ``rule``."""

    rule: Rule
    length: int
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, (tuple, list)) and len(value) == self.length and all(self.rule.accepts(v) for v in value)
        )

    def _what(self) -> str:
        return f"{self.length} values, each {self.rule.what}"


@dataclass(frozen=True)
class Check(Rule):
    """A value ``predicate`` accepts (a TypeError, ValueError or AttributeError it raises refuses the value too);
    ``text`` says what."""

    predicate: Callable[[Any], bool]
    text: str = "valid"

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError, AttributeError):
            return False


def check(owner: Any, name: str, value: Any, rule: Rule) -> None:
    """Raise ``owner``'s ValueError for parameter ``name`` unless ``rule`` accepts ``value``. ``owner`` is a
    :class:`Params` class or instance (its ``param_error`` words the message), or any other object or name."""
    if rule.accepts(value):
        return
    cls = owner if isinstance(owner, type) else type(owner)
    if issubclass(cls, Params):
        raise cls.param_error(name, rule.what, value)
    label = owner if isinstance(owner, str) else cls.__name__
    raise ValueError(f"{label} {name} must be {rule.what}, got {value!r}")


class Params:
    """Mixin: ``get_params`` / ``set_params`` over the ``__init__`` parameters, checked by ``_check_params``.

    Subclasses store every ``__init__`` parameter unchanged as an attribute of the same name, list declarative
    checks in ``param_rules`` (run by ``check_rules``) and call ``self._check_params()`` at the end of ``__init__``.
    """

    param_rules: ClassVar[Mapping[str, Rule]] = {}
    """Parameter name -> Rule, checked in this order by ``check_rules``."""

    @classmethod
    def param_names(cls) -> list[str]:
        """The ``__init__`` parameters (not self, not ``*args``/``**kwargs``), in signature order."""
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in skip
        ]

    @classmethod
    def param_error(cls, name: str, what: str, value: Any) -> ValueError:
        """The error refusing ``value`` for parameter ``name``: "<Class> <name> must be <what>, got <value>"."""
        return ValueError(f"{cls.__name__} {name} must be {what}, got {value!r}")

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` parameters and their current values (for configs and result records)."""
        return {p: getattr(self, p) for p in self.param_names()}

    def set_params(self, **kwargs: Any) -> None:
        """Set ``__init__`` parameters by name and re-check them all (ART's ``set_params``). Unknown names raise
        ValueError naming them (nothing is set); when ``_check_params`` refuses the new values, every value is left
        as it was and its error raised."""
        names = self.param_names()
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            hint = did_you_mean_each(unknown, names)
            raise ValueError(f"{type(self).__name__}: unknown parameter(s) {unknown}{hint}; valid: {names}")
        before = {k: getattr(self, k) for k in kwargs}
        for key, value in kwargs.items():
            setattr(self, key, value)
        try:
            self._check_params()
        except BaseException:
            for key, value in before.items():
                setattr(self, key, value)
            raise
        self._params_changed()

    def check_rules(self) -> None:
        """Check every parameter of ``param_rules`` (ValueError naming the first refused one)."""
        for name, rule in type(self).param_rules.items():
            check(self, name, getattr(self, name), rule)

    def _check_params(self) -> None:
        """Raise ValueError naming the first invalid parameter; by default the ``param_rules``."""
        self.check_rules()

    def _params_changed(self) -> None:
        """Called after ``set_params`` changed parameters: drop whatever was computed from the old values."""
