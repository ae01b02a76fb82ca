"""The search space: named parameters, each a training setting with a range or a list of choices.

A parameter of the ``hpo`` config group's ``space`` looks like

.. code-block:: yaml

    lr: {key: optimizer.lr, low: 1.0e-3, high: 2.0e-2, log: true}   # a float range, log-uniform
    layers: {key: model.num_layers, low: 1, high: 3, type: int}       # whole numbers 1, 2, 3
    batch: {key: data.batch_size, choices: [2, 4, 8]}                 # a list of values
    student: {key: model, choices: [nequip, painn]}                   # a config group's options

Its name is Optuna's parameter name and a column of ``trials.csv``; its value becomes the Hydra
override ``key=value`` of the trial's training run. The grid sampler needs ``choices`` for every
parameter; TPE takes both kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf

from .errors import SearchError

RANGE_FIELDS = ("low", "high", "log", "step", "type")
FIELDS = ("key", "choices", *RANGE_FIELDS)
_ABSENT = object()


@dataclass(frozen=True)
class Parameter:
    """One searched setting: ``key`` (dotted training key or config group) and its values."""

    name: str
    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        """This parameter's value for ``trial``, drawn by the study's sampler."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def override(self, value: Any) -> str:
        """The Hydra override that sets ``value``, e.g. ``optimizer.lr=0.0031``."""
        return f"{self.key}={hydra_value(value)}"

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and value != int(value):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        """``optimizer.lr in [0.001, 0.02] (log)`` or ``data.batch_size in {2, 4, 8}``."""
        if self.choices is not None:
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        kind = ", ".join(filter(None, ["int" if self.integer else "", "log" if self.log else "",
                                       f"step {self.step:g}" if self.step else ""]))
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (f" ({kind})" if kind else "")


def hydra_value(value: Any) -> str:
    """``value`` written as Hydra reads it back: ``true``, ``null``, ``0.0031``, ``painn``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_space(
    spec: Mapping[str, Any], base: DictConfig, groups: Mapping[str, Sequence[str]], sampler: str
) -> list[Parameter]:
    """The parameters of ``hpo.space``, checked against the training config they change.

    Args:
        spec: ``{name: {key: ..., choices: [...]} | {key: ..., low: ..., high: ..., log, step, type}}``.
        base: the composed training config every trial starts from.
        groups: config group -> its options (a key naming a group chooses among them).
        sampler: ``tpe`` or ``grid`` (the grid needs choices everywhere).
    Raises:
        SearchError: an empty space, an unknown key, a bad range or choice, a key given twice.
    """
    if not spec:
        raise SearchError("hpo.space is empty: give at least one parameter, e.g. "
                          "hpo.space.lr='{key: optimizer.lr, low: 1.0e-3, high: 2.0e-2, log: true}'")
    parameters, seen = [], {}
    for name, entry in spec.items():
        where = f"hpo.space.{name}"
        if not isinstance(entry, Mapping) or "key" not in entry:
            raise SearchError(f"{where}: expected a mapping with a key, e.g. {{key: optimizer.lr, low: 1.0e-3, high: 1.0e-2}}")
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise SearchError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
        key = str(entry["key"])
        if key in seen:
            raise SearchError(f"{where}: key {key} is already searched by hpo.space.{seen[key]}")
        seen[key] = name
        parameter = _parameter(name, key, entry, where)
        _check_key(parameter, base, groups, where)
        if sampler == "grid" and parameter.choices is None:
            raise SearchError(f"{where}: the grid sampler needs a list of choices, not a range")
        parameters.append(parameter)
    return parameters


def _parameter(name: str, key: str, entry: Mapping[str, Any], where: str) -> Parameter:
    if "choices" in entry:
        given = sorted(set(entry) & set(RANGE_FIELDS))
        if given:
            raise SearchError(f"{where}: give either choices or a range, not both (also has {', '.join(given)})")
        choices = entry["choices"]
        if not isinstance(choices, Sequence) or isinstance(choices, str) or len(choices) == 0:
            raise SearchError(f"{where}: choices must be a non-empty list")
        choices = tuple(choices)
        if any(isinstance(choice, (Mapping, list, tuple)) for choice in choices):
            raise SearchError(f"{where}: choices must be numbers, strings, booleans or null")
        if len(set(map(repr, choices))) != len(choices):
            raise SearchError(f"{where}: choices {list(choices)} repeat a value")
        return Parameter(name, key, choices=choices)
    if "low" not in entry or "high" not in entry:
        raise SearchError(f"{where}: give choices, or low and high")
    kind = entry.get("type", "float")
    if kind not in ("float", "int"):
        raise SearchError(f"{where}: type must be float or int, not {kind}")
    try:
        low, high = float(entry["low"]), float(entry["high"])
        step = None if entry.get("step") is None else float(entry["step"])
    except (TypeError, ValueError):
        raise SearchError(f"{where}: low, high and step must be numbers") from None
    log = bool(entry.get("log", False))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SearchError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise SearchError(f"{where}: a log range needs low > 0, not {low:g}")
    if step is not None and (step <= 0 or log):
        raise SearchError(f"{where}: step must be positive and cannot go with log")
    if kind == "int" and (low != int(low) or high != int(high) or (step is not None and step != int(step))):
        raise SearchError(f"{where}: an int range needs whole low, high and step")
    return Parameter(name, key, low=low, high=high, log=log, step=step, integer=kind == "int")


def _check_key(parameter: Parameter, base: DictConfig, groups: Mapping[str, Sequence[str]], where: str) -> None:
    key = parameter.key
    if key in groups:
        if parameter.choices is None:
            raise SearchError(f"{where}: {key} is a config group: give its options as choices ({', '.join(groups[key])})")
        unknown = [choice for choice in parameter.choices if choice not in groups[key]]
        if unknown:
            raise SearchError(f"{where}: {key} has no option(s) {', '.join(map(str, unknown))} "
                              f"(options: {', '.join(groups[key])})")
        return
    value = OmegaConf.select(base, key, default=_ABSENT)
    if value is _ABSENT:
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(base, parent, default=None) if parent else base
        known = ", ".join(str(k) for k in section) if isinstance(section, DictConfig) else "none"
        raise SearchError(f"{where}: {key} is not a setting of the training config "
                          f"({parent or 'the top level'} has: {known})")
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        raise SearchError(f"{where}: {key} is a section, not a single setting")
    if isinstance(value, (bool, int, float, str)):
        kind = bool if isinstance(value, bool) else str if isinstance(value, str) else (int, float)
        values = parameter.choices if parameter.choices is not None else (parameter.low,)
        wrong = [v for v in values if v is not None and (not isinstance(v, kind) or (kind != bool and isinstance(v, bool)))]
        if wrong:
            raise SearchError(f"{where}: {wrong[0]!r} is not a value for {key}, which is {value!r} in the training config")


def base_values(parameters: Sequence[Parameter], base: DictConfig, choices: Mapping[str, str]) -> dict[str, Any] | None:
    """The training config's own value of every parameter, or ``None`` when one lies outside
    the space (then the unchanged config cannot be a trial of this search)."""
    values = {}
    for parameter in parameters:
        value = choices[parameter.key] if parameter.key in choices else OmegaConf.select(base, parameter.key)
        if not parameter.contains(value):
            return None
        values[parameter.name] = int(value) if parameter.integer else value
    return values
