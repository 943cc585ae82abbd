"""A short chaos run (benchmarks/chaos.py, a shorter schedule): three workers on a TINY grid on
PostgreSQL and a real `mlflow server`, under SIGKILL, SIGTERM, server restarts (one at a trial's
end), terminated database connections and cut HTTP answers; nothing lost, doubled or left RUNNING,
and the audit finds Optuna and MLflow agreeing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO
from deployment import Postgres

sys.path.insert(0, str(REPO / "benchmarks"))
import chaos  # noqa: E402

pytestmark = pytest.mark.slow

SHORT = chaos.Schedule(
    seed=1,
    kill_every=(25.0, 35.0),
    sigterm=(10.0, 20.0),
    boundary_restart_after=(5.0, 10.0),
    restart=(40.0, 50.0),
    pg_terminate=(20.0, 30.0),
    cut=(12.0, 18.0),
    cut_seconds=2.0,
    downtime=(5.0, 3.0),
)


def test_a_short_chaos_run_loses_nothing(postgres: Postgres, tmp_path: Path) -> None:
    with chaos.stack(tmp_path, postgres) as built:
        plan = chaos.grid_plan(tmp_path, 6)
        result = chaos.run_study(built, "chaos-test", plan, tmp_path / "run", SHORT, deadline=900)
    faults = result["faults"]
    assert faults["sigterm"] == 1 and faults["pg_terminate"] == 1 and faults["http_cut_windows"] == 1, result
    assert faults["mlflow_restart_at_trial_end"] == 1, result
    assert not faults["deadline_hit"], result
    outcome = {k: result[k] for k in ("lost", "duplicated", "left_running", "disagreements")}
    assert outcome == {"lost": 0, "duplicated": 0, "left_running": 0, "disagreements": 0}, result
    assert result["check_exit"] == 0, result
