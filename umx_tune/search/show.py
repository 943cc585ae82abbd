"""`--show-grid` and `--show-space`: what a study would run, as text."""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from umx_tune.config import TrainConfig
from umx_tune.search.plans import Grid, Space


def grid_table(grid: Grid, base: TrainConfig) -> str:
    """The entries as a table (one row each, one column per parameter the grid sets)."""
    keys: list[str] = []
    for entry in grid.entries:
        keys.extend(k for k in entry.values if k not in keys)
    header = ["name", *keys]
    rows = [[e.name, *(_fmt(e.values.get(k, getattr(base, k))) for k in keys)] for e in grid.entries]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{grid.name}: {grid.description}".rstrip(": ")]
    for row in [header, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    lines.append(_base_line(base, keys))
    return "\n".join(lines)


def space_table(space: Space, base: TrainConfig) -> str:
    """One line per searched parameter with its distribution."""
    width = max(len(name) for name in space.params)
    lines = [f"{space.name}: {space.description}".rstrip(": ")]
    lines.extend(f"  {name.ljust(width)}  {describe(dist)}" for name, dist in space.params.items())
    lines.append(_base_line(base, list(space.params)))
    return "\n".join(lines)


def describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(_fmt(c) for c in dist.choices)
    if isinstance(dist, IntDistribution | FloatDistribution):
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        extra = " (log scale)" if dist.log else (f" step {_fmt(dist.step)}" if dist.step else "")
        return f"{kind} {_fmt(dist.low)} .. {_fmt(dist.high)}{extra}"
    return repr(dist)


def _base_line(base: TrainConfig, covered: list[str]) -> str:
    defaults = TrainConfig()
    changed = [
        f"{k}={_fmt(v)}"
        for k, v in base.to_params().items()
        if k not in covered and v != getattr(defaults, k)
    ]
    rest = ", ".join(changed) if changed else "TrainConfig's defaults"
    return f"every other parameter from the base config: {rest}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
