"""Models in MLflow: URIs, run ids and loading the Separator a umx-tune run logged (logging one is
RunTracker.log_model). Reads are retried by the one policy."""

from __future__ import annotations

import os
import re

import torch
from openunmix.model import Separator

from umx_tune.errors import ModelError, first_line
from umx_tune.tracking import run_model_uri
from umx_tune.tracking.retry import retried

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def model_uri(ref: str) -> str:
    """An MLflow model URI from a URI or a bare run id (-> runs:/<id>/model)."""
    return run_model_uri(ref) if _RUN_ID.match(ref) else ref


def load_separator(ref: str, device: torch.device) -> Separator:
    """The Separator a umx-tune run logged, from a model URI or run id."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = model_uri(ref)
    # MLflow's download progress bars would precede a later one-line error on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        model = retried(mlflow.pytorch.load_model)(uri, map_location=device)
    except (MlflowException, OSError) as err:
        first = first_line(err)
        raise ModelError(f"cannot load model {uri!r}: {first}") from None
    if not isinstance(model, Separator):
        raise ModelError(f"model {uri!r} is a {type(model).__name__}, not an Open-Unmix Separator")
    return model.to(device).eval()


def model_run_id(uri: str) -> str:
    """The run that logged a model URI (runs:/, models:/, …); ModelError if it names none."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:
        run_id = retried(get_model_info)(uri).run_id
    except (MlflowException, OSError) as err:
        raise ModelError(f"cannot find the run of model {uri!r}: {first_line(err)}") from None
    if not run_id:
        raise ModelError(f"model {uri!r} was not logged by a run; --log needs one")
    return str(run_id)
