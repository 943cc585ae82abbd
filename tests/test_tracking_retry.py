"""The retry policy, through MLflow's own HTTP client against a real socket server: a request whose
answer is cut midway is tried again; an error answer, and a refused connection that MLflow's own
retries have already given up on, are not."""

from __future__ import annotations

import socket
import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

from umx_tune.tracking import retry
from umx_tune.tracking.retry import ATTEMPTS, retried

BODY = b'{"ok": true}'


def serve(answers: list[bytes]) -> str:
    """A server on 127.0.0.1 that gives each connection the next raw answer, then closes it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(len(answers))

    def run() -> None:
        for answer in answers:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(answer)
            connection.close()
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def answer(status: str, body: bytes, length: int | None = None) -> bytes:
    """A raw HTTP answer; a Content-Length above len(body) makes it one cut midway."""
    headers = f"Content-Type: application/json\r\nContent-Length: {length or len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\n{headers}\r\n".encode() + body


def get(url: str, calls: list[int]) -> str:
    calls.append(1)
    response = http_request(MlflowHostCreds(url), "/api/2.0/mlflow/runs/get", "GET", max_retries=0)
    return response.text


def test_an_answer_cut_midway_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    url = serve([answer("200 OK", BODY[:3], length=len(BODY)), answer("200 OK", BODY)])
    calls: list[int] = []
    assert retried(get)(url, calls) == BODY.decode()
    assert len(calls) == 2


def test_an_error_answer_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    url = serve([answer("400 Bad Request", b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "no"}')])
    calls: list[int] = []

    def get_verified(url: str, calls: list[int]) -> None:
        calls.append(1)
        response = http_request(MlflowHostCreds(url), "/api/2.0/mlflow/runs/get", "GET", max_retries=0)
        verify_rest_response(response, "/api/2.0/mlflow/runs/get")

    with pytest.raises(MlflowException, match="no"):
        retried(get_verified)(url, calls)
    assert len(calls) == 1


def test_a_cut_that_lasts_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    cut = answer("200 OK", BODY[:3], length=len(BODY))
    url = serve([cut] * ATTEMPTS)
    calls: list[int] = []
    with pytest.raises(MlflowException, match="IncompleteRead|Connection broken"):
        retried(get)(url, calls)
    assert len(calls) == ATTEMPTS


def test_a_refused_connection_is_left_to_mlflows_own_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry.time, "sleep", lambda seconds: None)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    calls: list[int] = []
    with pytest.raises(MlflowException, match="Max retries exceeded"):
        retried(get)(url, calls)
    assert len(calls) == 1
