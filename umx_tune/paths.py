"""Where umx-tune keeps files it makes for itself (synthetic datasets, decoded audio, checkpoints),
and the check that a command can write where it is going to, made before it starts any work."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from umx_tune.errors import ConfigError

# per-epoch checkpoints, one folder per MLflow run id, relative to the working directory
DEFAULT_CHECKPOINT_ROOT = Path("umx-tune-checkpoints")


def cache_root() -> Path:
    """`UMX_TUNE_CACHE` if set, else `~/.cache/umx-tune`."""
    env = os.environ.get("UMX_TUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "umx-tune"


def require_writable(path: Path, what: str, *, file: bool = False) -> Path:
    """path, or a ConfigError naming what goes there when this process cannot write it: the folder
    path (or, with file, the folder of the file path) must be a folder it may create files in, or be
    creatable in the nearest folder above that exists. Nothing is created: a command refused later
    leaves no empty folder behind."""
    folder = path.parent if file else path
    if file and path.exists() and (path.is_dir() or not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {what} to {path}: it is a folder or not writable")
    for existing in (folder, *folder.parents):
        if existing.exists():
            break
    if not existing.is_dir():
        raise ConfigError(f"cannot write {what} to {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {what} to {path}: {existing} is not writable")
    return path


def require_writable_uri(uri: str, what: str) -> None:
    """require_writable for the local file or folder a sqlite:/// or file: URI (or plain path) names;
    nothing for a server's URI (postgresql://, http://, grpc://, …)."""
    if uri.startswith("sqlite:///"):
        require_writable(Path(uri[len("sqlite:///") :]), what, file=True)
    elif uri.startswith("file:") or "://" not in uri:
        require_writable(Path(urllib.parse.urlparse(uri).path if "://" in uri else uri), what)
