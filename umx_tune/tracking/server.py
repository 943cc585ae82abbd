"""Where MLflow is: the tracking URI and a check that its server answers.

A server is asked first with one probe, so that a command pointed at no server fails in seconds;
once it has answered, this process takes a silence for an outage (a restart, a network drop) and
waits for it to end, as long as the retry policy's OUTAGE_WAITS, before it gives up.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import mlflow

from umx_tune.errors import TrackingUnreachable
from umx_tune.paths import require_writable_uri

_answered: set[str] = set()  # the tracking servers that have answered this process


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else MLflow's local default (sqlite:///mlflow.db here)."""
    return mlflow.get_tracking_uri()


def _probe(uri: str, timeout: float) -> str | None:
    """None when the server answers /health, else why it does not."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def check_server(uri: str | None = None, timeout: float = 10.0) -> None:
    """TrackingUnreachable when an http(s) tracking server does not answer /health: at once if it
    never answered this process, after OUTAGE_WAITS of probes if it did (see the module docstring);
    ConfigError when a local store cannot be written."""
    from umx_tune.tracking.retry import OUTAGE_WAITS

    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        # a local store (MLflow's default: mlflow.db in the working directory) is written at once
        require_writable_uri(uri, "the MLflow store")
        return
    waits = OUTAGE_WAITS if uri in _answered else ()
    for wait in (*waits, None):
        reason = _probe(uri, timeout)
        if reason is None:
            _answered.add(uri)
            return
        if wait is not None:
            time.sleep(wait)
    raise TrackingUnreachable(f"MLflow tracking server {uri} does not answer ({reason}); is it running?")


def require_server() -> None:
    """check_server, once per process and server: before the first MLflow call (tracking.retry)."""
    if tracking_uri() not in _answered:
        check_server()
