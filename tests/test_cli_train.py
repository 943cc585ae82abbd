"""End to end against a real MLflow server: `umx-tune train/separate/evaluate`, `mlflow run .`, bad input.

`train`, `evaluate` and the bad input run in this process through the entry point (`run_main`);
real processes where they are the point: `mlflow run .` (slow), `separate`'s console script, and a
`train` whose tracking server does not answer.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
from conftest import (
    REPO,
    TINY,
    VENV_BIN,
    MlflowServer,
    assert_one_line_error,
    cli_env,
    free_port,
    run_cli,
    run_main,
)
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.config import SAMPLE_RATE, TrainConfig

TINY_ARGS = [arg for name, value in TINY.items() for arg in (option_name(name), str(value))]


def _runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@pytest.fixture(scope="module")
def trained_run(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One `umx-tune train` of the tiny config, unidirectional (so its real-time probe streams)."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    checkpoints = str(tmp_path_factory.mktemp("train-checkpoints"))
    args = [
        *TINY_ARGS,
        "--unidirectional",
        "--experiment",
        "train-e2e",
        "--quiet",
        "--checkpoint-dir",
        checkpoints,
    ]
    try:
        done = run_main(None, "train", *args)
    finally:
        mlflow.set_tracking_uri(None)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = _runs(MlflowClient(mlflow_server.uri), "train-e2e")
    return run.info.run_id


def check_training_run(client: MlflowClient, run_id: str) -> None:
    """A finished training run: TrainConfig params, per-epoch curves, scores, timing, versions, the
    dataset, artifacts, the real-time probe and a model that `load_separator` reads (no pickle)."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    expected = TrainConfig.from_dict(TINY).to_params()
    assert set(expected) <= set(run.data.params)
    assert {k: run.data.params[k] for k in TINY} == {k: str(expected[k]) for k in TINY}
    for name in ("train_loss", "valid_loss", "epoch_seconds"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    for name in (
        "SDR",
        "SIR",
        "ISR",
        "SAR",
        "vocals_SDR",
        "accompaniment_SAR",
        tracking.GLOBAL_SDR,
        tracking.metric_name("vocals", tracking.GLOBAL_SDR),
        tracking.metric_name("accompaniment", tracking.GLOBAL_SDR),
        "train_seconds",
        "eval_seconds",
    ):
        assert math.isfinite(run.data.metrics[name]), name
    assert run.data.tags["umx_tune.version"] and run.data.tags["openunmix.version"]
    assert run.inputs.dataset_inputs[0].dataset.digest
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"plots", "eval", "checkpoint"} <= artifacts  # the model is an MLflow 3 LoggedModel
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics[tracking.REALTIME_FACTOR] > 0
    # the probe runs on one thread, so that its rtf_compute is the separating thread's CPU time
    assert tags[tracking.TAG_RTF_DEVICE] == "cpu" and tags[tracking.TAG_RTF_THREADS] == "1"
    assert 0 < metrics[tracking.REALTIME_FACTOR_COMPUTE] <= 1.5 * metrics[tracking.REALTIME_FACTOR]
    assert metrics[tracking.TRAIN_COMPUTE_SECONDS] > 0 and metrics[tracking.LOAD_PER_CORE] >= 0
    # the curves tag `report` reads holds the metric histories (to its 6 significant digits)
    curves = tracking.read_curves_tag(tags[tracking.TAG_CURVES])
    assert curves is not None and set(curves) == set(tracking.CURVE_METRICS)
    for key, values in curves.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in values] == [step for step, _ in history]
        assert [v for _, v in values] == pytest.approx([v for _, v in history], rel=1e-5)
    if run.data.params["unidirectional"] == "True":
        assert metrics[tracking.REALTIME_FACTOR_STREAMING] > 0
        assert metrics[tracking.LATENCY_MS] == pytest.approx(1000 * (1024 - 256 + 2 * 256) / SAMPLE_RATE)
    else:
        assert tracking.REALTIME_FACTOR_STREAMING not in metrics
    import torch

    from umx_tune.tracking.models import load_separator

    separator = load_separator(run_id, torch.device("cpu"))
    mix = np.random.default_rng(0).standard_normal((1, 2, 44100)).astype("float32")

    assert separator(torch.from_numpy(mix)).shape == (1, 2, 2, 44100)


def test_train_logs_params_curves_scores_probe_and_model(trained_run: str, tracking_uri: str) -> None:
    check_training_run(MlflowClient(tracking_uri), trained_run)


@pytest.fixture(scope="module")
def project_run(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One `mlflow run . --env-manager local` of the tiny config against the test server."""
    params = [arg for name, value in TINY.items() for arg in ("-P", f"{name}={value}")]
    workdir = tmp_path_factory.mktemp("mlflow-run")
    result = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "run",
            str(REPO),
            "--env-manager",
            "local",
            "--experiment-name",
            "e2e",
            *params,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,
        env=cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(mlflow_server.uri)
    (run,) = _runs(MlflowClient(mlflow_server.uri), "e2e")
    return run.info.run_id


@pytest.mark.slow
def test_mlflow_run_logs_params_curves_scores_and_model(project_run: str, tracking_uri: str) -> None:
    """The MLproject's `main` entry point is the same training, logged the same way."""
    check_training_run(MlflowClient(tracking_uri), project_run)


def test_separate_writes_target_and_residual(trained_run: str, tracking_uri: str, tmp_path: Path) -> None:
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(1).uniform(-0.3, 0.3, (44100, 2)), 44100)
    result = run_cli("separate", "--model", trained_run, str(song), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for name in ("song_vocals.wav", "song_accompaniment.wav"):
        audio, rate = sf.read(tmp_path / "out" / name)
        assert rate == 44100 and audio.shape == (44100, 2)


def test_evaluate_logs_a_new_run(trained_run: str, tracking_uri: str, capsys) -> None:
    result = run_main(
        capsys, "evaluate", "--model", f"runs:/{trained_run}/model", "--experiment", "evals", "--quiet",
        *TINY_ARGS[TINY_ARGS.index("--synth-tracks"):],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = _runs(MlflowClient(tracking_uri), "evals")
    assert run.info.status == "FINISHED" and math.isfinite(run.data.metrics["SDR"])


def test_train_resume_continues_the_loss_curve(tracking_uri: str, tmp_path: Path, capsys) -> None:
    client = MlflowClient(tracking_uri)
    args = [*TINY_ARGS, "--experiment", "resume", "--quiet", "--checkpoint-dir", str(tmp_path)]
    first = run_main(capsys, "train", *args, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    (run,) = _runs(client, "resume")
    resumed = run_main(capsys, "train", *args, "--epochs", "3", "--resume", run.info.run_id)
    assert resumed.returncode == 0, resumed.stderr
    history = client.get_metric_history(run.info.run_id, "valid_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    refused = run_main(capsys, "train", *args, "--hidden-size", "32", "--resume", run.info.run_id)
    assert_one_line_error(refused, "hidden_size=32 (checkpoint has 16)")


def test_corrupt_dataset_fails_the_run_and_names_the_file(
    synth_root: Path, tracking_uri: str, tmp_path: Path, capsys
) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "train" / "synth-train-000" / "bass.wav").write_bytes(b"not a wav")
    result = run_main(capsys, "train", *TINY_ARGS, "--root", str(root), "--is-wav", "--experiment", "corrupt")
    assert_one_line_error(result, "synth-train-000/bass.wav")
    (run,) = _runs(MlflowClient(tracking_uri), "corrupt")
    assert run.info.status == "FAILED" and "bass.wav" in run.data.tags["umx_tune.error"]


@pytest.mark.slow
def test_unknown_mlproject_parameter(tracking_uri: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "mlflow"), "run", str(REPO), "--env-manager", "local",
         "--experiment-name", "bad-param", "-P", "hidden_sise=8"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=cli_env(),
    )  # fmt: skip
    assert result.returncode != 0
    # mlflow run appends an undeclared parameter as `--hidden_sise 8`
    assert "umx-tune: error: No such option" in result.stderr and "--hidden_sise" in result.stderr
    runs = _runs(MlflowClient(tracking_uri), "bad-param")
    assert runs and all(r.info.status == "FAILED" for r in runs)


def test_tracking_server_that_does_not_answer(tmp_path: Path) -> None:
    """The real console script: exit 2 and one line, within 30 s."""
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = run_cli("train", *TINY_ARGS, cwd=tmp_path, MLFLOW_TRACKING_URI=uri)
    assert time.monotonic() - start < 30
    assert_one_line_error(result, f"MLflow tracking server {uri} does not answer")
