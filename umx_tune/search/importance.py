"""Which parameters matter: Optuna's parameter importances of a finished study.

Two evaluators, each normalised to sum to 1 over the parameters: PED-ANOVA (Optuna 5's default:
how much each parameter explains reaching the best 10% of trials) and fANOVA (the share of the
objective's variance over the whole space, from a random forest; seeded, so repeatable). Both
read the complete trials and the parameters that every one of them has and that vary among them;
a multi-objective study is ranked on its first objective.
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.importance import (
    BaseImportanceEvaluator,
    FanovaImportanceEvaluator,
    PedAnovaImportanceEvaluator,
    get_param_importances,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from umx_tune.errors import first_line

# column name -> (label, evaluator): the table's columns and the plot's bars, in this order
EVALUATORS: dict[str, tuple[str, Callable[[], BaseImportanceEvaluator]]] = {
    "ped_anova": ("PED-ANOVA", PedAnovaImportanceEvaluator),
    "fanova": ("fANOVA", lambda: FanovaImportanceEvaluator(seed=0)),
}
PARAM_COLUMN = "param"
Importances = dict[str, dict[str, float]]  # evaluator column -> {param: importance}


def varying_params(study: optuna.Study) -> list[str]:
    """The params every complete trial has and that take more than one value among them."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return []
    shared = set.intersection(*(set(t.params) for t in complete))
    return sorted(p for p in shared if len({t.params[p] for t in complete}) > 1)


def param_importances(study: optuna.Study) -> Importances:
    """Each evaluator's importances ({} when fewer than two complete trials differ in a param).

    An evaluator that cannot rank these trials (fANOVA on values that do not vary) is left out,
    with a note on stderr.
    """
    params = varying_params(study)
    if not params:
        return {}
    target = _first_objective(study)
    found: Importances = {}
    for column, (name, make) in EVALUATORS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's: lower target is better (it is)
                ranked = get_param_importances(study, evaluator=make(), params=params, target=target)
        except (RuntimeError, ValueError) as err:
            print(f"umx-tune: note: no {name} importances: {first_line(err)}", file=sys.stderr)
            continue
        found[column] = {param: float(value) for param, value in ranked.items()}
    return found


def _first_objective(study: optuna.Study) -> Callable[[FrozenTrial], float] | None:
    """None for one objective (the study's direction is used); for several, the first one,
    oriented so that lower is better, as PED-ANOVA takes any target (fANOVA's variance is the same)."""
    if len(study.directions) == 1:
        return None
    sign = 1.0 if study.directions[0] == StudyDirection.MINIMIZE else -1.0
    return lambda t: sign * t.values[0]


def to_csv(importances: Importances) -> str:
    """One row per param (most important first, by the first evaluator), one column per evaluator."""
    columns = [c for c in EVALUATORS if c in importances]
    first = importances[columns[0]]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([PARAM_COLUMN, *columns])
    for param in sorted(first, key=lambda p: -first[p]):
        writer.writerow([param, *(f"{importances[c][param]:.6g}" for c in columns)])
    return out.getvalue()


def from_csv(text: str) -> Importances:
    """The importances back from `to_csv`'s table."""
    rows = list(csv.DictReader(io.StringIO(text)))
    columns = [c for c in EVALUATORS if rows and c in rows[0]]
    return {c: {row[PARAM_COLUMN]: float(row[c]) for row in rows} for c in columns}
