"""Training checkpoints: what one holds (the schema, in one place), writing and reading it, finding a
run's last one, and the config to resume it with.

A checkpoint file is a dict of Checkpoint's fields saved with torch.save: weights, optimizer and
scheduler state dicts and torch's generator state as torch values, the config and the training
state as JSON strings. Nothing in it is a pickled class, so it loads with weights_only=True.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from umx_tune.config import TrainConfig
from umx_tune.errors import ModelError, TrackingError, first_line
from umx_tune.tracking import CHECKPOINT_ARTIFACT_DIR

CHECKPOINT_FILE = "checkpoint.pt"  # in a run's checkpoint folder, and in its MLflow artifacts

StateDict = dict[str, Any]  # what Module / Optimizer / LR scheduler .state_dict() return


@dataclass
class TrainState:
    """Everything besides weights that a resumed run needs to continue identically."""

    epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    train_losses: list[float] = field(default_factory=list)
    valid_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epoch_compute_seconds: list[float] = field(default_factory=list)  # Trainer._compute_clock's
    samples_seen: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """A run after its last finished epoch; each field is one key of the checkpoint file."""

    config: TrainConfig  # stored as JSON: the model can be rebuilt from it alone
    state: TrainState  # stored as JSON
    model: StateDict  # the network's weights after the last epoch
    best_model: StateDict  # its weights at the best validation loss so far
    optimizer: StateDict
    scheduler: StateDict
    torch_rng: torch.Tensor  # torch.get_rng_state(): a resumed run draws the same numbers


def run_checkpoint_dir(checkpoint_root: Path, run_id: str) -> Path:
    """The folder holding one run's checkpoint: one folder per MLflow run id under checkpoint_root."""
    return checkpoint_root / run_id


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Save to a temporary file, then rename: a crash never leaves half a checkpoint at path."""
    payload = {f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)}
    payload["config"] = json.dumps(checkpoint.config.to_params())
    payload["state"] = json.dumps(asdict(checkpoint.state))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint `write_checkpoint` wrote at path, tensors on the CPU; ModelError if it is not one."""
    if not path.is_file():
        raise ModelError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ModelError(f"cannot load checkpoint {path}: {first_line(err)}") from None
    names = [f.name for f in fields(Checkpoint)]
    missing = [name for name in names if not isinstance(payload, dict) or name not in payload]
    if missing:
        raise ModelError(f"{path} is not a umx-tune checkpoint: it holds no {', '.join(missing)}")
    values = {name: payload[name] for name in names}
    try:
        values["state"] = TrainState(**json.loads(values["state"]))
        config = json.loads(values["config"])
    except (TypeError, ValueError) as err:
        raise ModelError(f"{path} holds an unreadable training state or config: {first_line(err)}") from None
    values["config"] = TrainConfig.from_dict(config, where=f"checkpoint {path}")
    return Checkpoint(**values)


def checkpoint_file(run_id: str, checkpoint_root: Path) -> Path:
    """The run's last checkpoint: local if present, else downloaded from the run's artifacts."""
    local = run_checkpoint_dir(checkpoint_root, run_id) / CHECKPOINT_FILE
    if local.is_file():
        return local
    from umx_tune.tracking.client import Client  # MLflow: only when needed

    # downloaded elsewhere first: a run without a checkpoint leaves no empty folder behind
    with tempfile.TemporaryDirectory(prefix="umx-tune-") as tmp:
        try:
            downloaded = Client().download_artifact(
                run_id, f"{CHECKPOINT_ARTIFACT_DIR}/{CHECKPOINT_FILE}", Path(tmp)
            )
        except TrackingError as err:
            raise ModelError(f"no checkpoint to resume run {run_id} in {local.parent}: {err}") from None
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_suffix(".tmp")  # the temporary folder may be on another file system
        shutil.move(downloaded, partial)
        partial.replace(local)
    return local


def resume_config(run_id: str, checkpoint_root: Path, overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's config with the user's overrides; a change to the model's shape is an error."""
    saved = read_checkpoint(checkpoint_file(run_id, checkpoint_root)).config
    wanted = saved.replace(**overrides)
    changes = saved.model_shape_changes(wanted)
    if changes:
        raise ModelError(f"cannot resume run {run_id} with a different model shape: {changes}")
    return wanted
