"""The one retry policy for MLflow calls that are safe to repeat."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from mlflow.exceptions import MlflowException

_P = ParamSpec("_P")
_R = TypeVar("_R")
CUT_CONNECTION_RETRIES = 5  # waits of 1, 2, 4, 8 s: a server that drops out for ~15 s loses nothing


def _connection_cut(err: MlflowException) -> bool:
    """Whether err is a request whose connection broke: refused, reset, or cut mid-response."""
    import requests

    cause = err.__cause__ or err.__context__
    return isinstance(cause, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError)


def survives_cut_connections(call: Callable[_P, _R]) -> Callable[_P, _R]:
    """Retry call when its connection to the server broke. MLflow retries a refused connection
    itself, but not one cut while the answer was arriving (a server restarting, a proxy dropping),
    which would otherwise fail a whole run. For calls that can safely run twice."""

    @wraps(call)
    def retrying(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        attempt = 0
        while True:
            try:
                return call(*args, **kwargs)
            except MlflowException as err:
                attempt += 1
                if attempt == CUT_CONNECTION_RETRIES or not _connection_cut(err):
                    raise
                time.sleep(2 ** (attempt - 1))

    return retrying
