"""What a run cost: `umx-tune train` logs MLflow's system metrics into its run, and
`--no-system-metrics` logs none (a real server; MLflow's own variable shortens the 10 s interval)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, run_main
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name

Capture = pytest.CaptureFixture[str]
TINY_ARGS = [arg for name, value in {**TINY, "epochs": 1}.items() for arg in (option_name(name), str(value))]
# what MLflow's CPU, disk and network monitors log on any machine (GPU ones only where NVML finds one)
EXPECTED = (
    "cpu_utilization_percentage",
    "system_memory_usage_megabytes",
    "system_memory_usage_percentage",
    "disk_usage_percentage",
    "network_receive_megabytes",
)


def _train(capsys: Capture, tmp_path: Path, experiment: str, *extra: str) -> str:
    """A tiny `umx-tune train`; returns its run id."""
    args = [*TINY_ARGS, "--device", "cpu", "--quiet", "--experiment", experiment]
    done = run_main(capsys, "train", *args, "--checkpoint-dir", str(tmp_path), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(experiment).experiment_id])
    return run.info.run_id


def test_train_logs_system_metrics_and_no_system_metrics_logs_none(
    tracking_uri: str, synth_root: Path, tmp_path: Path, capsys: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # tiny runs last seconds
    client = MlflowClient()

    sampled = client.get_run(_train(capsys, tmp_path, "system-metrics-on"))
    names = {k for k in sampled.data.metrics if k.startswith(tracking.SYSTEM_METRICS_PREFIX)}
    assert {tracking.SYSTEM_METRICS_PREFIX + name for name in EXPECTED} <= names, names
    cpu = client.get_metric_history(sampled.info.run_id, f"{tracking.SYSTEM_METRICS_PREFIX}{EXPECTED[0]}")
    assert len(cpu) >= 2 and [m.step for m in cpu] == list(range(len(cpu)))  # one step per sample
    assert all(0.0 <= m.value <= 100.0 for m in cpu)
    assert sampled.data.params["system_metrics"] == "True" and sampled.info.status == "FINISHED"

    silent = client.get_run(_train(capsys, tmp_path, "system-metrics-off", "--no-system-metrics"))
    assert not [k for k in silent.data.metrics if k.startswith(tracking.SYSTEM_METRICS_PREFIX)]
    assert silent.data.params["system_metrics"] == "False" and silent.info.status == "FINISHED"
    assert tracking.TRAIN_LOSS in silent.data.metrics  # the run itself is logged as ever
