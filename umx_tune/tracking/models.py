"""Models: URIs, run ids and loading a separator (logging one is RunTracker.log_model).

A umx-tune model is an Open-Unmix model folder (separation.folder) plus MLflow's MLmodel file;
loading one reads JSON and state dicts (weights_only=True) and runs no code. A model in MLflow's
pytorch flavor is a pickle that runs whatever it holds when loaded (models logged before umx-tune
logged folders): it is refused unless the caller trusts it. Downloads are retried by the one policy.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from openunmix.model import Separator

from umx_tune.errors import ModelError, first_line
from umx_tune.separation.folder import is_model_folder, read_model_folder, read_target_args
from umx_tune.tracking import TAG_INIT_MODEL, TAG_INIT_RUN, run_model_uri
from umx_tune.tracking.retry import retried

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")  # runs:/, models:/, file:/, s3://, …
MLMODEL_FILE = "MLmodel"
PICKLED_FLAVOR = "pytorch"  # mlflow.pytorch: torch.save of the whole module (a pickle)
TRUST_FLAG = "--trust-model"


@dataclass(frozen=True)
class LoadedModel:
    """A loaded separator, where it came from (a model URI or a folder) and, where its folder has
    them, each target's training options (its `<target>.json` args)."""

    separator: Separator
    source: str
    args: dict[str, dict[str, Any]] = field(default_factory=dict)


def model_uri(ref: str) -> str:
    """An MLflow model URI from a URI or a bare run id (-> runs:/<id>/model); a folder stays itself."""
    return run_model_uri(ref) if _RUN_ID.match(ref) else ref


def load_separator(ref: str, device: torch.device, *, trust_model: bool = False) -> Separator:
    """The separator of a run id, a model URI (runs:/, models:/, …) or a local model folder; a
    pickled model only with trust_model (ModelError naming TRUST_FLAG otherwise)."""
    return load_model(ref, device, trust_model=trust_model).separator


def load_model(ref: str, device: torch.device, *, trust_model: bool = False) -> LoadedModel:
    """load_separator, with the model's source and its targets' training options."""
    if Path(ref).expanduser().is_dir():
        folder = Path(ref).expanduser().resolve()
        return _open(folder, str(folder), device, trust_model)
    if not (_RUN_ID.match(ref) or _URI.match(ref)):
        raise ModelError(f"model {ref!r} is neither a run id, a model URI (runs:/, models:/) nor a folder")
    uri = model_uri(ref)
    with tempfile.TemporaryDirectory(prefix="umx-tune-model-") as tmp:
        return _open(download_model(uri, Path(tmp)), uri, device, trust_model)


def download_model(uri: str, dst_dir: Path) -> Path:
    """The model's files (MLmodel and what it names), downloaded into dst_dir; ModelError if none."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    # MLflow's download progress bars would precede a later one-line error on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = retried(mlflow.artifacts.download_artifacts)(artifact_uri=uri, dst_path=str(dst_dir))
    except (MlflowException, OSError) as err:
        raise ModelError(f"cannot load model {uri!r}: {first_line(err)}") from None
    return Path(local)


def _open(folder: Path, source: str, device: torch.device, trust_model: bool) -> LoadedModel:
    """The model in folder: an Open-Unmix folder (with or without MLmodel) or a trusted pickle."""
    if is_model_folder(folder):
        return LoadedModel(read_model_folder(folder, device), source, read_target_args(folder))
    flavors = _flavors(folder, source)
    if PICKLED_FLAVOR not in flavors:
        raise ModelError(f"model {source!r} is not a umx-tune or Open-Unmix model (flavors: {flavors})")
    if not trust_model:
        raise ModelError(
            f"model {source!r} is a pickle (MLflow's pytorch flavor), which runs any code it holds "
            f"when loaded; pass {TRUST_FLAG} to load it if you trust whoever logged it (`umx-tune "
            f"export MODEL {TRUST_FLAG} --out DIR` converts it once)"
        )
    return LoadedModel(_load_pickled(folder, source, device), source)


def _flavors(folder: Path, source: str) -> list[str]:
    from mlflow.models import Model

    if not (folder / MLMODEL_FILE).is_file():
        raise ModelError(f"model {source!r} has neither separator.json nor an MLmodel file")
    try:
        return sorted(Model.load(str(folder / MLMODEL_FILE)).flavors)
    except Exception as err:  # MLflow raises whatever the YAML parser or its schema raise
        raise ModelError(f"cannot read the MLmodel file of {source!r}: {first_line(err)}") from None


def _load_pickled(folder: Path, source: str, device: torch.device) -> Separator:
    import mlflow.pytorch

    try:
        model = mlflow.pytorch.load_model(str(folder), map_location=device)
    except (OSError, RuntimeError, AttributeError, ModuleNotFoundError) as err:
        raise ModelError(f"cannot load model {source!r}: {first_line(err)}") from None
    if not isinstance(model, Separator):
        raise ModelError(f"model {source!r} is a {type(model).__name__}, not an Open-Unmix Separator")
    return model.to(device).eval()


def init_tags(source: str) -> dict[str, str]:
    """The tags of a run fine-tuned from source (a LoadedModel's): the model, and the run that
    logged it where source is a model URI rather than a folder."""
    if not _URI.match(source):
        return {TAG_INIT_MODEL: source}
    return {TAG_INIT_MODEL: source, TAG_INIT_RUN: model_run_id(source)}


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
