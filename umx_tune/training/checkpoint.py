"""Training checkpoints: loading one, finding a run's last one, and the config to resume it with."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from umx_tune.config import TrainConfig
from umx_tune.errors import ModelError, first_line


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by Trainer, loaded with weights_only=True."""
    if not path.is_file():
        raise ModelError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ModelError(f"cannot load checkpoint {path}: {err}") from None


def checkpoint_file(run_id: str, checkpoint_root: Path) -> Path:
    """The run's last checkpoint: local if present, else downloaded from the run's artifacts."""
    local = checkpoint_root / run_id / "checkpoint.pt"
    if local.is_file():
        return local
    import mlflow
    from mlflow.exceptions import MlflowException

    local.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=local.parent) as tmp:
        try:
            downloaded = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="checkpoint/checkpoint.pt", dst_path=tmp
            )
        except (MlflowException, OSError) as err:
            raise ModelError(
                f"no checkpoint to resume run {run_id}: not in {local.parent} and not in the run's "
                f"artifacts ({first_line(err)})"
            ) from None
        Path(downloaded).replace(local)
    return local


def resume_config(run_id: str, checkpoint_root: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's config with the user's overrides; a change to the model's shape is an error."""
    payload = load_checkpoint(checkpoint_file(run_id, checkpoint_root))
    saved = TrainConfig.from_dict(json.loads(payload["config"]))
    wanted = saved.replace(**overrides)
    changes = saved.model_shape_changes(wanted)
    if changes:
        raise ModelError(f"cannot resume run {run_id} with a different model shape: {changes}")
    return wanted
