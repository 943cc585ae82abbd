"""`umx-tune compose`: four models as one separator, logged as one MLflow model; `evaluate` scores its
four estimates jointly, `separate` writes all four; bad input; a grid that trains all four targets.

The four source models are untrained tiny networks logged as the pipeline logs a run's (params and
model), so the module trains nothing; the commands run in this process (`run_main`).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, MlflowServer, assert_one_line_error, run_main
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name
from umx_tune.config import SAMPLE_RATE, TARGETS, TrainConfig
from umx_tune.separation.model import build_separator, build_unmix
from umx_tune.tracking.runs import start_run

Capture = pytest.CaptureFixture[str]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
EXPERIMENT = "compose"
DATA_ARGS = [
    arg
    for name in ("synth_tracks", "synth_duration", "synth_seed")
    for arg in (option_name(name), str(TINY[name]))
]


def _log_model(config: TrainConfig) -> str:
    torch.manual_seed(TARGETS.index(config.target))
    with start_run(experiment="compose-sources", run_name=config.target) as tracker:
        tracker.log_config(config)
        tracker.log_model(build_separator(config, build_unmix(config)), {config.target: config.to_params()})
    return tracker.run_id


@pytest.fixture(scope="module")
def sources(mlflow_server: MlflowServer) -> dict[str, str]:
    """Run ids: one tiny model per target, and 'nfft512', a drums model of another STFT."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        runs = {target: _log_model(TrainConfig.from_dict({**TINY, "target": target})) for target in TARGETS}
        runs["nfft512"] = _log_model(TrainConfig.from_dict({**TINY, "target": "drums", "nfft": 512}))
    finally:
        mlflow.set_tracking_uri(None)
    return runs


def _args(runs: dict[str, str]) -> list[str]:
    return [arg for target in TARGETS for arg in (f"--{target}", runs[target])]


def _compose_runs(client: MlflowClient) -> list:
    found = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([found.experiment_id]) if found else []


def test_compose_logs_one_four_target_model_that_evaluate_and_separate_use(
    sources: dict[str, str], tracking_uri: str, synth_root: Path, tmp_path: Path, capsys: Capture
) -> None:
    client = MlflowClient(tracking_uri)
    done = run_main(
        capsys, "compose", *_args(sources), "--niter", "0", "--register", "umx4", "--experiment", EXPERIMENT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = _compose_runs(client)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_KIND] == tracking.KIND_COMPOSITION
    assert run.data.params[tracking.COMPOSE_NITER_PARAM] == "0"
    for target in TARGETS:
        assert run.data.params[tracking.composed_model_param(target)] == f"runs:/{sources[target]}/model"
    (version,) = client.search_model_versions("name = 'umx4'")
    assert run.data.tags[tracking.TAG_REGISTERED_MODEL] == f"umx4/{version.version}"

    evaluated = run_main(capsys, "evaluate", "--model", "models:/umx4/1", "--experiment", "compose-eval",
                         "--quiet", "--no-audio", *DATA_ARGS)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [line.split()[0] for line in evaluated.stdout.splitlines() if line.startswith("  ")]
    assert rows == [*TARGETS, tracking.TARGETS_MEAN]  # the per-target table, then their mean
    found = client.get_experiment_by_name("compose-eval")
    (scored,) = client.search_runs([found.experiment_id])
    metrics = scored.data.metrics
    per_target = [metrics[tracking.metric_name(t, "SDR")] for t in TARGETS]
    assert metrics["SDR"] == pytest.approx(np.mean(per_target))
    assert tracking.metric_name("drums", tracking.GLOBAL_SDR) in metrics
    assert "targets=vocals,drums,bass,other" in scored.data.tags[tracking.TAG_PROTOCOL_SUMMARY]

    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).uniform(-0.3, 0.3, (SAMPLE_RATE // 4, 2)), SAMPLE_RATE)
    out = tmp_path / "out"
    separated = run_main(capsys, "separate", "--model", "models:/umx4/1", str(song), "--out", str(out))
    assert separated.returncode == 0, separated.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"song_{t}.wav" for t in TARGETS)


def test_compose_bad_input_is_one_line_and_starts_no_run(
    sources: dict[str, str], tracking_uri: str, capsys: Capture
) -> None:
    client = MlflowClient(tracking_uri)
    before = len(_compose_runs(client))
    twice = [*_args(sources), "--vocals", sources["vocals"]]
    wrong = _args({**sources, "drums": sources["vocals"]})
    other_stft = _args({**sources, "drums": sources["nfft512"]})
    for args, fragment in (
        (twice, "--vocals is given 2 times"),
        (wrong, "separates vocals, not drums"),
        (other_stft, "the drums model has nfft=512 and the vocals model nfft=1024"),
    ):
        done = run_main(capsys, "compose", *args, "--experiment", EXPERIMENT)
        assert_one_line_error(done, fragment, progress_before=True)
    assert len(_compose_runs(client)) == before


def test_a_grid_sets_the_target_per_entry(tmp_path: Path, capsys: Capture) -> None:
    """One study trains all four: each entry of the grid names its target."""
    grid = tmp_path / "four.yaml"
    grid.write_text("entries:\n" + "".join(f"  umx-{t}: {{target: {t}}}\n" for t in TARGETS))
    done = run_main(capsys, "optimize", "--show-grid", str(grid))
    assert done.returncode == 0, done.stderr
    for target in TARGETS:
        assert any(
            f"umx-{target}" in line and target in line.split()[1:] for line in done.stdout.splitlines()
        )
