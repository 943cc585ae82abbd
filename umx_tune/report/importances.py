"""The study's parameter importances, read back from its parent run for `report --study`."""

from __future__ import annotations

from umx_tune import tracking
from umx_tune.search.importance import EVALUATORS, from_csv
from umx_tune.tracking.client import Client

NOTE = (
    "PED-ANOVA: how much a parameter explains reaching the best 10% of trials (Optuna's default); "
    "fANOVA: its share of the objective's variance over the space. Each column sums to 1; over the "
    "complete trials and the parameters that vary among them."
)


def markdown(parent_run_id: str) -> str:
    """The importances the study logged when it ended, as a markdown section ('' where it logged
    none: fewer than two complete trials, or no parameter that varied)."""
    client = Client()
    text = client.read_text(parent_run_id, tracking.STUDY_IMPORTANCES_ARTIFACT)
    if text is None:
        return ""
    importances = from_csv(text)
    columns = list(importances)
    first = importances[columns[0]]
    objective = client.get_run(parent_run_id).data.tags.get(tracking.TAG_OBJECTIVE, "the objective")
    lines = [
        f"## Parameter importances for {objective}",
        "",
        "| param | " + " | ".join(EVALUATORS[c][0] for c in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for param in sorted(first, key=lambda p: -first[p]):
        lines.append(f"| {param} | " + " | ".join(f"{importances[c][param]:.3f}" for c in columns) + " |")
    return "\n".join(["", *lines, "", NOTE, ""])
