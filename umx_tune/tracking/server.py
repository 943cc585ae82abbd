"""Where MLflow is: the tracking URI and a fail-fast check that its server answers."""

from __future__ import annotations

import urllib.error
import urllib.request

import mlflow

from umx_tune.errors import TrackingError


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's local default (sqlite:///mlflow.db here)."""
    return mlflow.get_tracking_uri()


def check_server(uri: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast (TrackingError) when an http(s) tracking server does not answer /health."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err))
    raise TrackingError(f"MLflow tracking server {uri} does not answer ({reason}); is it running?")
