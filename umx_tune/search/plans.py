"""What a study runs: a grid (fixed entries) or a space (Optuna distributions) over TrainConfig.

Both are checked against TrainConfig when loaded, against the study's base config, so that a bad
value anywhere in a file stops the command before any training starts. A plan's only contact with
Optuna at run time is `config_for`: it turns a trial into a TrainConfig.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from umx_tune.config import TrainConfig, coerce, param_field, param_type
from umx_tune.errors import ConfigError
from umx_tune.search import files

GRID_ENTRY_ATTR = "grid_entry"  # Optuna user attr naming the grid entry an enqueued trial runs


@dataclass(frozen=True)
class GridEntry:
    name: str
    values: dict[str, Any]  # TrainConfig names -> values, coerced to the parameters' types


@dataclass(frozen=True)
class Grid:
    """Named entries, each run exactly once with its values over the base config."""

    name: str
    entries: tuple[GridEntry, ...]
    description: str = ""
    mode: str = "grid"

    def entry(self, name: str) -> GridEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"{self.name}: no entry {name!r}")

    def distributions(self) -> dict[str, BaseDistribution]:
        """Per key, a categorical over the values the entries use (so Optuna's plots can compare)."""
        choices: dict[str, list[Any]] = {}
        for entry in self.entries:
            for key, value in entry.values.items():
                if value not in choices.setdefault(key, []):
                    choices[key].append(value)
        return {key: CategoricalDistribution(values) for key, values in choices.items()}

    def config_for(self, trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
        """The config of the entry the trial was enqueued for (its values are the trial's fixed params)."""
        name = trial.user_attrs.get(GRID_ENTRY_ATTR)
        if name is None:
            raise ConfigError(f"trial {trial.number} of grid {self.name} names no grid entry")
        entry = self.entry(name)
        dists = self.distributions()
        values = {key: suggest(trial, key, dists[key]) for key in entry.values}
        return base.replace(where=f"{self.name}: entry {name!r}", **values)

    def to_json(self) -> str:
        entries = [[e.name, e.values] for e in self.entries]
        return json.dumps({"mode": self.mode, "name": self.name, "entries": entries}, sort_keys=True)


@dataclass(frozen=True)
class Space:
    """Optuna distributions over some TrainConfig parameters; the rest come from the base config."""

    name: str
    params: dict[str, BaseDistribution]
    description: str = ""
    mode: str = "search"

    def distributions(self) -> dict[str, BaseDistribution]:
        return dict(self.params)

    def config_for(self, trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
        values = {name: suggest(trial, name, dist) for name, dist in self.params.items()}
        return base.replace(where=f"{self.name}: trial {trial.number}", **values)

    def to_json(self) -> str:
        params = {name: json.loads(distribution_to_json(d)) for name, d in self.params.items()}
        return json.dumps({"mode": self.mode, "name": self.name, "params": params}, sort_keys=True)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """trial.suggest_* for a distribution object."""
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def plan_from_json(text: str) -> Grid | Space:
    """The plan a study stored with `to_json`."""
    data = json.loads(text)
    if data["mode"] == "grid":
        entries = tuple(GridEntry(name, values) for name, values in data["entries"])
        return Grid(name=data["name"], entries=entries)
    params = {name: json_to_distribution(json.dumps(d)) for name, d in data["params"].items()}
    return Space(name=data["name"], params=params)


def load_grid(ref: str, base: TrainConfig) -> Grid:
    """A shipped grid name or a grid file, every entry checked against TrainConfig over base."""
    where, raw, description = _plan_file("grid", ref, "entries", "entry names to parameter values")
    entries = []
    for name, values in raw.items():
        at = f"{where}: entry {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: entry name {name!r} must be a non-empty string")
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{at}: expected a mapping of parameter names to values")
        config = base.replace(where=at, **values)  # unknown names, types, bounds, relations
        entries.append(GridEntry(name, {key: getattr(config, key) for key in values}))
    return Grid(name=where, entries=tuple(entries), description=description)


def load_space(ref: str, base: TrainConfig) -> Space:
    """A shipped space name or a space file, every distribution checked against TrainConfig."""
    where, raw, description = _plan_file("space", ref, "params", "parameter names to distributions")
    params = {name: _distribution(name, spec, base, f"{where}: params.{name}") for name, spec in raw.items()}
    return Space(name=where, params=params, description=description)


def _plan_file(kind: str, ref: str, key: str, mapping: str) -> tuple[str, dict[Any, Any], str]:
    """A grid or space file's display name, the non-empty mapping under `key` (of `mapping`), and
    its description."""
    path = files.resolve(kind, ref)
    where = files.display_name(path)
    doc = files.check_keys(files.read_yaml(path), where, (key,), ("description",))
    raw = doc[key]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: '{key}' must map {mapping}")
    return where, raw, str(doc.get("description", ""))


_SPEC_KEYS = {
    "int": (("type", "low", "high"), ("step", "log")),
    "float": (("type", "low", "high"), ("step", "log")),
    "categorical": (("type", "choices"), ()),
}


def _distribution(name: str, spec: Any, base: TrainConfig, where: str) -> BaseDistribution:
    """One space entry as an Optuna distribution whose every value TrainConfig accepts."""
    param = param_field(name, f"{where}: ")
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _SPEC_KEYS:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(_SPEC_KEYS)}")
    required, optional = _SPEC_KEYS[kind]
    files.check_keys(spec, where, required, optional)
    field_type = param_type(param)
    if kind == "categorical":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list")
        values = [coerce(param, c, f"{where}.choices: ") for c in choices]
        for value in values:
            base.replace(where=f"{where}.choices", **{name: value})
        return CategoricalDistribution(values)
    if kind != field_type:
        raise ConfigError(f"{where}: {name} is a {field_type} parameter; 'type: {kind}' does not fit it")
    bounds = {key: coerce(param, spec[key], f"{where}.{key}: ") for key in ("low", "high")}
    for key, value in bounds.items():
        base.replace(where=f"{where}.{key}", **{name: value})
    log = bool(spec.get("log", False))
    try:
        if kind == "int":
            return IntDistribution(bounds["low"], bounds["high"], log=log, step=spec.get("step", 1))
        return FloatDistribution(bounds["low"], bounds["high"], log=log, step=spec.get("step"))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None
