"""Where umx-tune keeps files it makes for itself (synthetic datasets, decoded audio)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`UMX_TUNE_CACHE` if set, else `~/.cache/umx-tune`."""
    env = os.environ.get("UMX_TUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "umx-tune"
