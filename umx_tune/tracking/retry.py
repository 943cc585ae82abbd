"""The one retry policy for MLflow calls, every one of them safe to repeat (tracking.client makes
them all).

A call is tried again, after waits of 1, 2, 4 and 8 s, when a repeat can succeed where it failed:

- the connection broke while the answer arrived (a server restarting, a proxy dropping). MLflow's
  HTTP client retries a refused connection and an answer that never began itself, with its own
  backoff of minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES); such errors come here spent and are not
  repeated, or a server that is down would hold a run five times as long before it fails;
- the call lost a check-then-insert race on the server: two workers logging the same dataset
  into one experiment at once both find it missing and both insert it; the loser's transaction
  is rolled back with a unique-constraint error, and its repeat finds the winner's row.

Before a process's first call, the tracking server is asked once whether it answers at all
(tracking.server.require_server): a server that is not there fails the command in seconds instead
of after MLflow's minutes of retries. A server that answered once and then stops answering is
waited for, at the start of each run, for up to OUTAGE_WAITS (tracking.server.check_server).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from mlflow.exceptions import MlflowException

from umx_tune.tracking.server import require_server

_P = ParamSpec("_P")
_R = TypeVar("_R")
WAITS = (1, 2, 4, 8)  # seconds before each repeat: a server that drops out for ~15 s loses nothing
ATTEMPTS = len(WAITS) + 1
# a run's start waits this long for a server that answered before (a restart takes seconds; a
# worker that gives up re-queues its trial and stops): about two minutes in all
OUTAGE_WAITS = (*WAITS, *(15,) * 7)
# how sqlite, PostgreSQL and MySQL word a unique-constraint violation (MLflow passes it on as BAD_REQUEST)
_UNIQUE_VIOLATION = re.compile("UNIQUE constraint failed|UniqueViolation|duplicate key value|Duplicate entry")


def _cut_midway(err: MlflowException) -> bool:
    """Whether err is a request whose answer was cut while it arrived."""
    import requests
    from urllib3.exceptions import ProtocolError

    cause = err.__cause__ or err.__context__
    if isinstance(cause, requests.exceptions.ChunkedEncodingError):
        return True
    # a ConnectionError wrapping MaxRetryError is one MLflow's own retries have given up on
    reason = cause.args[0] if isinstance(cause, requests.exceptions.ConnectionError) and cause.args else None
    return isinstance(reason, ProtocolError)


def _lost_insert_race(err: MlflowException) -> bool:
    """Whether the server rolled err's call back because another writer inserted the same row first."""
    return err.error_code == "BAD_REQUEST" and bool(_UNIQUE_VIOLATION.search(err.message))


def transient(err: MlflowException) -> bool:
    """Whether a repeat of the call that raised err can succeed (see the module's docstring)."""
    return _cut_midway(err) or _lost_insert_race(err)


def unreachable(err: BaseException) -> bool:
    """Whether err says the server could not be reached (MLflow's own retries spent on refused
    connections, timeouts or answers such as 503 from a server that is restarting), rather than
    that it refused the call."""
    from requests import exceptions

    cause = (err.__cause__ or err.__context__) if isinstance(err, MlflowException) else err
    return isinstance(cause, exceptions.ConnectionError | exceptions.RetryError | exceptions.Timeout)


def retried(call: Callable[_P, _R]) -> Callable[_P, _R]:
    """call, tried again on a transient error (up to ATTEMPTS in all). Only for calls that can
    safely run twice: the server may have done what a cut answer was about to confirm."""

    @wraps(call)
    def retrying(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        require_server()
        repeats = 0
        while True:
            try:
                return call(*args, **kwargs)
            except MlflowException as err:
                if repeats == len(WAITS) or not transient(err):
                    raise
                time.sleep(WAITS[repeats])
                repeats += 1

    return retrying
