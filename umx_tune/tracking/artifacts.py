"""A run's artifacts, fetched back from MLflow's artifact store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from umx_tune.errors import TrackingError, first_line
from umx_tune.tracking.retry import retried


def download_artifact(run_id: str, artifact_path: str, dst_dir: Path) -> Path:
    """Download one artifact (a file or a folder) of a run into dst_dir and return its local path.

    TrackingError (one line) when the run or the artifact does not exist or cannot be read.
    """
    # MLflow's download progress bar would precede a later one-line error on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    download = retried(mlflow.artifacts.download_artifacts)
    try:
        local = download(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst_dir))
    except (MlflowException, OSError) as err:
        raise TrackingError(f"cannot download {artifact_path} of run {run_id}: {first_line(err)}") from None
    return Path(local)
