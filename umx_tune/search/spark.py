"""`umx-tune optimize --backend spark`: umx-tune's own Optuna workers, run as Apache Spark tasks.

Each Spark task runs the ordinary worker (`driver.optimize`: atomic claims, heartbeats, one nested
MLflow run per trial) against the study's shared storage, so a trial runs exactly once however many
tasks and executors there are, and a task that dies leaves its trial to the heartbeat recovery
like any other worker. MLflow's `MlflowSparkStudy` is not used: it stores trials in MLflow's
`MlflowStorage`, whose claims of queued trials are not atomic (see the optimize issue).

The Spark driver only fixes what every task must agree on (study name, storage URL, absolute
tracking URI and paths), starts the tasks and reports what they did; it trains nothing itself.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from umx_tune import cores
from umx_tune.errors import ConfigError, UmxTuneError, first_line
from umx_tune.search.settings import Request
from umx_tune.tracking import TRACKING_URI_ENV
from umx_tune.tracking.server import check_server, tracking_uri

# the environment a task needs to reach the tracking server and umx-tune's cache
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "UMX_TUNE_CACHE",
    cores.THREADS_ENV,
)


def default_master(workers: int) -> str:
    """A local Spark with one core per worker task."""
    return f"local[{workers}]"


def run_on_spark(request: Request, options: Any, master: str | None, workers: int) -> None:
    """Run `workers` umx-tune workers of the study as Spark tasks on `master`; print their outcomes.

    options is the driver's RunOptions. The first user error a task met is raised here as itself.
    """
    from umx_tune.search import storage

    _require_pyspark()
    check_server()  # fail here, not once per task after Spark has started
    master = master or default_master(workers)
    uri = _absolute_tracking_uri(tracking_uri())
    # decided once here, so that no task derives a storage of its own from where it runs
    storage_url = options.storage_url or storage.default_url(uri)
    if not master.startswith("local") and storage_url.startswith("sqlite:"):
        raise ConfigError(
            f"--backend spark on {master} needs a --storage every executor shares "
            "(postgresql://… or grpc://host:port); a sqlite file is local to one machine"
        )
    session = _start_spark(master, f"umx-tune optimize {request.study_name}")
    options = dataclasses.replace(
        options, storage_url=storage_url, checkpoint_root=options.checkpoint_root.resolve()
    )
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    env[TRACKING_URI_ENV] = uri
    if master.startswith("local") and cores.THREADS_ENV not in env:
        # Spark's tasks cannot count each other: each gets its share of this machine's cores
        env[cores.THREADS_ENV] = str(max(1, cores.machine_cores() // workers))
    task = _Task(request, options, env)
    try:
        results = session.sparkContext.parallelize(range(workers), workers).map(task).collect()
    finally:
        session.stop()
    errors = [error for _, error in results if error]
    if errors and len(errors) == len(results):
        # every task failed, as a rule the same way (a bad option, rejected credentials): say it once
        raise _TaskError(errors[0][1], errors[0][0])
    for index, (outcome, error) in enumerate(results):
        if error:
            print(f"umx-tune: spark task {index} failed: {error[1]}", file=sys.stderr)
        else:
            print(f"spark task {index}: {outcome}")


class _TaskError(UmxTuneError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass(frozen=True)
class _Task:
    """One Spark task: one umx-tune worker. Pickled to the executors."""

    request: Request
    options: Any  # driver.RunOptions
    env: dict[str, str]

    def __call__(self, _index: int) -> tuple[str | None, tuple[int, str] | None]:
        """(the worker's printed outcome, None) or (None, (exit code, one-line error))."""
        import mlflow

        from umx_tune.search import driver

        os.environ.update(self.env)
        os.environ.pop("MLFLOW_RUN_ID", None)  # a task never adopts the driver's project run
        # a reused Python worker may have run another task already: point MLflow here again
        mlflow.set_tracking_uri(self.env[TRACKING_URI_ENV])
        out = io.StringIO()
        try:
            with redirect_stdout(out):
                driver.print_outcome(driver.optimize(self.request, self.options))
        except UmxTuneError as err:
            return None, (err.exit_code, " ".join(str(err).split()))
        return out.getvalue().strip(), None


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--backend spark needs pyspark: pip install pyspark (or pip install 'umx-tune[spark]')"
        ) from None


def _start_spark(master: str, name: str) -> Any:
    from pyspark.sql import SparkSession

    try:
        # no retries of a failed task: a worker that fails has said why, and the study's own
        # recovery (heartbeats, requeue) deals with trials that a dead worker left behind
        return (
            SparkSession.builder.master(master)
            .appName(name)
            .config("spark.task.maxFailures", "1")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
    except Exception as err:  # Spark's errors for a bad master URL or a missing Java
        first = first_line(err)
        raise ConfigError(
            f"cannot start Spark on {master!r} (Java 17+ on PATH or JAVA_HOME?): {first}"
        ) from None


def _absolute_tracking_uri(uri: str) -> str:
    """sqlite:///relative.db and plain paths made absolute: tasks may run in another folder."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).resolve())
    return uri
