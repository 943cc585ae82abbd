"""`umx-tune optimize --backend spark`: umx-tune's Optuna workers as tasks of a local Spark."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, assert_one_line_error, run_cli, run_main
from mlflow.tracking import MlflowClient

from umx_tune import tracking
from umx_tune.cli.options import option_name

BASE_ARGS = [
    arg
    for name, value in {**TINY, "epochs": 1, "evaluator": "fast", "device": "cpu"}.items()
    for arg in (option_name(name), str(value))
]
# a search over tiny sizes only, so that every trial trains in seconds
SPACE = {
    "params": {
        "hidden_size": {"type": "int", "low": 8, "high": 16, "step": 4},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    }
}


@pytest.mark.slow
def test_search_on_local_spark_runs_every_trial_once(
    tracking_uri: str, synth_root: Path, tmp_path: Path
) -> None:
    if importlib.util.find_spec("pyspark") is None or shutil.which("java") is None:
        pytest.skip("needs pyspark and Java (bash scripts/setup.sh installs pyspark)")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    result = run_cli(
        "optimize", "--backend", "spark", "--spark-master", "local[2]", "--spark-workers", "2",
        "--search", str(space), "--n-trials", "4", "--study-name", "spark", "--pruner", "none",
        "--quiet", *BASE_ARGS, cwd=tmp_path, timeout=900,
        OMP_NUM_THREADS="1",  # two tasks on two cores: one torch thread each, not two
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("spark task") == 2, result.stdout

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("umx-tune")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.TAG_STUDY}` = 'spark'")
    trials = [r for r in runs if tracking.TAG_TRIAL_NUMBER in r.data.tags]
    numbers = sorted(int(r.data.tags[tracking.TAG_TRIAL_NUMBER]) for r in trials)
    assert numbers == [0, 1, 2, 3], "each of the 4 trials ran exactly once"
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_spark_backend_without_pyspark_says_what_to_install(tmp_path: Path) -> None:
    """pyspark hidden from the import system (so a real process): one line naming the install
    command, exit 2."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # a sitecustomize that makes `import pyspark` fail, as in an environment without it
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoPyspark:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pyspark' or name.startswith('pyspark.'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, _NoPyspark())\n"
    )
    result = run_cli(
        "optimize", "--backend", "spark", "--grid", "seed", "--study-name", "nospark",
        cwd=tmp_path, timeout=300, PYTHONPATH=str(blocker), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db",
    )  # fmt: skip
    assert_one_line_error(result, "pip install pyspark")


def test_cluster_master_with_a_local_storage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Executors on other machines would each get their own sqlite file: a split study."""
    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("needs pyspark")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    result = run_main(
        capsys, "optimize", "--backend", "spark", "--spark-master", "spark://cluster:7077", "--grid", "seed",
        "--study-name", "split",
    )  # fmt: skip
    assert_one_line_error(result, "--storage", "sqlite")
