"""Search spaces: parsed from plain dicts (as read from YAML), sampled through Optuna.

A spec maps each parameter name to a dict with a ``type`` and its bounds::

    lr:      {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    layers:  {type: int, low: 1, high: 4}
    readout: {type: categorical, choices: [mean, concat]}

Allowed keys: ``float``: low, high, log, step; ``int``: low, high, log, step;
``categorical``: choices. Anything else is an error that names the parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from bsym.sweep.errors import SweepError

_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_CHOICE_TYPES = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class FloatParam:
    """A real parameter in ``[low, high]``, log-uniform when ``log``, on a grid when ``step``."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial):
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict:
        spec = {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        return spec if self.step is None else {**spec, "step": self.step}


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in ``[low, high]`` (both included)."""

    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1

    def suggest(self, trial):
        return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class CategoricalParam:
    """One of a fixed list of ``choices`` (None, bool, int, float or str)."""

    name: str
    choices: tuple

    def suggest(self, trial):
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclass(frozen=True)
class SearchSpace:
    """An ordered collection of parameters; build one with :func:`parse_space`.

    The order is the spec's order: it is the order in which parameters are
    suggested, so it is part of what makes a seeded sweep repeatable.
    """

    params: tuple

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __len__(self):
        return len(self.params)

    def suggest(self, trial) -> dict[str, Any]:
        """Sample this space's parameters for an Optuna ``trial``; see :func:`suggest_params`."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_dict(self) -> dict[str, dict]:
        """The spec as plain dicts (``parse_space(space.to_dict()) == space``)."""
        return {p.name: p.to_dict() for p in self.params}


def _fail(name, message):
    raise SweepError(f"search space parameter {name!r}: {message}")


def _show(value):
    return f"{value!r} ({type(value).__name__})"


def _number(name, key, value, *, integer):
    if integer:
        if isinstance(value, bool) or not isinstance(value, Integral):
            _fail(name, f"{key} must be an integer, got {_show(value)}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, Real):
        hint = " (YAML reads 1e-4 as a string: write 1.0e-4)" if isinstance(value, str) else ""
        _fail(name, f"{key} must be a number, got {_show(value)}{hint}")
    if not math.isfinite(value):
        _fail(name, f"{key} must be finite, got {value!r}")
    return float(value)


def _flag(name, key, value):
    if not isinstance(value, bool):
        _fail(name, f"{key} must be true or false, got {_show(value)}")
    return value


def _parse_range(name, spec, kind):
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            _fail(name, f"{kind} parameter needs '{key}'; got keys {sorted(spec)}")
    low = _number(name, "low", spec["low"], integer=integer)
    high = _number(name, "high", spec["high"], integer=integer)
    if low >= high:
        _fail(name, f"low must be below high, got low={low!r}, high={high!r}")
    log = _flag(name, "log", spec.get("log", False))
    if log and low <= 0:
        _fail(name, f"log scale needs low > 0, got low={low!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(name, "step", step, integer=integer)
        if step <= 0:
            _fail(name, f"step must be positive, got {step!r}")
        if log and (not integer or step != 1):
            _fail(name, f"log scale and step={step!r} cannot be combined (drop one)")
        ratio = (high - low) / step
        if abs(ratio - round(ratio)) > 1e-9 * max(1.0, abs(ratio)):
            _fail(name, f"high - low must be a multiple of step, got low={low!r}, high={high!r}, "
                        f"step={step!r}")
    if integer:
        return IntParam(name, low, high, log=log, step=1 if step is None else step)
    return FloatParam(name, low, high, log=log, step=step)


def _parse_choices(name, spec):
    choices = spec.get("choices")
    if not isinstance(choices, (list, tuple)):
        _fail(name, f"categorical parameter needs 'choices', a list, got {_show(choices)}")
    if not choices:
        _fail(name, "choices must not be empty")
    for choice in choices:
        if not isinstance(choice, _CHOICE_TYPES):
            _fail(name, f"each choice must be null, a boolean, a number or a string, "
                        f"got {_show(choice)}")
    if len({(type(c), c) for c in choices}) != len(choices):
        _fail(name, f"choices must be distinct, got {list(choices)!r}")
    return CategoricalParam(name, tuple(choices))


def parse_space(spec) -> SearchSpace:
    """Validate a search-space spec and return a :class:`SearchSpace`.

    Parameters
    ----------
    spec : mapping or SearchSpace
        ``{name: {"type": "float" | "int" | "categorical", ...}}``; see the module
        docstring for the keys of each type. A :class:`SearchSpace` is returned as is.

    Returns
    -------
    SearchSpace

    Raises
    ------
    SweepError
        On an empty spec, an unknown type or key, a missing or non-numeric bound,
        ``low >= high``, a log scale with ``low <= 0``, a bad step, or empty or
        repeated choices. The message names the parameter.
    """
    if isinstance(spec, SearchSpace):
        return spec
    if not isinstance(spec, dict):
        raise SweepError(f"search space must be a mapping of parameter name to spec, got {_show(spec)}")
    if not spec:
        raise SweepError("search space is empty: give at least one parameter")
    params = []
    for name, entry in spec.items():
        if not isinstance(name, str) or not name:
            raise SweepError(f"search space parameter names must be non-empty strings, got {_show(name)}")
        if not isinstance(entry, dict):
            _fail(name, f"expected a mapping with a 'type', got {_show(entry)}")
        kind = entry.get("type")
        if kind not in _KEYS:
            _fail(name, f"type must be one of {sorted(_KEYS)}, got {kind!r}")
        unknown = sorted(set(map(str, entry)) - _KEYS[kind])
        if unknown:
            _fail(name, f"unknown key(s) {unknown} for a {kind} parameter; allowed: {sorted(_KEYS[kind])}")
        params.append(_parse_choices(name, entry) if kind == "categorical"
                      else _parse_range(name, entry, kind))
    return SearchSpace(tuple(params))


def suggest_params(trial, space) -> dict[str, Any]:
    """Sample one value per parameter with ``trial.suggest_float/int/categorical``.

    Parameters
    ----------
    trial : optuna.trial.Trial
    space : SearchSpace or mapping
        A parsed space, or a spec for :func:`parse_space`.

    Returns
    -------
    dict
        Parameter name -> sampled value, in the space's order.
    """
    return parse_space(space).suggest(trial)
