"""Loading models (MLflow URIs, run ids, pretrained UMX) and checkpoints to resume from."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

import torch
from openunmix.model import Separator

from umx_tune.config import TARGETS, TrainConfig
from umx_tune.errors import ConfigError, ModelError, OfflineError
from umx_tune.train import load_checkpoint

PRETRAINED = ("umxhq",)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(ref: str) -> str:
    """An MLflow model URI from a URI or a bare run id (-> runs:/<id>/model)."""
    return f"runs:/{ref}/model" if _RUN_ID.match(ref) else ref


def load_separator(ref: str, device: torch.device) -> Separator:
    """The Separator a umx-tune run logged, from a model URI or run id."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = model_uri(ref)
    # MLflow's download progress bars would precede a later one-line error on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        model = mlflow.pytorch.load_model(uri, map_location=device)
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {uri!r}: {first}") from None
    if not isinstance(model, Separator):
        raise ModelError(f"model {uri!r} is a {type(model).__name__}, not an Open-Unmix Separator")
    return model.to(device).eval()


def load_pretrained(name: str, target: str, device: torch.device) -> Separator:
    """Open-Unmix's pretrained separator (downloads its weights; OfflineError without internet)."""
    import openunmix

    if name not in PRETRAINED:
        raise ConfigError(f"pretrained={name!r} is not known; choose one of {', '.join(PRETRAINED)}")
    if target not in TARGETS:
        raise ConfigError(f"target={target!r} is not allowed; choose one of {', '.join(TARGETS)}")
    try:
        # torch.hub announces the download on stderr; the error below says all that matters
        with contextlib.redirect_stderr(io.StringIO()):
            separator = openunmix.umxhq(targets=[target], residual=True, niter=1, device=str(device))
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise OfflineError(
            f"cannot download the pretrained {name} weights ({_reason(err)}); "
            "this needs internet access (or the weights in torch's hub cache)"
        ) from None
    return separator.eval()


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).strip().splitlines()[0] if str(reason).strip() else type(err).__name__


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
                f"artifacts ({_reason(err)})"
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
