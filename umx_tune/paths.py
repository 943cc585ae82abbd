"""Where umx-tune keeps files it makes for itself (synthetic datasets, decoded audio, checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

# per-epoch checkpoints, one folder per MLflow run id, relative to the working directory
DEFAULT_CHECKPOINT_ROOT = Path("umx-tune-checkpoints")


def cache_root() -> Path:
    """`UMX_TUNE_CACHE` if set, else `~/.cache/umx-tune`."""
    env = os.environ.get("UMX_TUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "umx-tune"
