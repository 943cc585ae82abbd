"""An HTTP proxy in front of a real MLflow server that cuts chosen answers midway.

Every request is forwarded and done by the server; the answers chosen to be cut are sent only in
part and the connection is closed, as when a connection drops while the answer arrives. MLflow's
own HTTP client does not retry such a request: umx-tune's retry policy must, and the repeat meets a
server that has already done the work.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# headers that belong to one hop, not to the request or answer passed on
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """An upstream that is down (restarting) closes the client's connection without an answer,
        as a server that went away would; no traceback on the proxy's stderr."""


class CuttingProxy:
    """A proxy on 127.0.0.1 in front of upstream (http://host:port); `cut(path)` cuts that path's
    next answer; `cut_paths` lists the paths whose answers were cut, in order."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream).netloc
        self.pending: Counter[str] = Counter()
        self.cut_paths: list[str] = []
        self.requests: Counter[str] = Counter()  # path -> requests forwarded
        self._cut_until = 0.0  # time.monotonic() until which cut_for cuts every answer
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as MLflow's client expects

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Host"] = proxy.upstream
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    connection.request(self.command, self.path, body, headers)
                    answer = connection.getresponse()
                    content = answer.read()
                finally:
                    connection.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP | {"date", "server"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if proxy._take_cut(urllib.parse.urlsplit(self.path).path, bool(content)):
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base's name)
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def cut(self, path: str, times: int = 1) -> None:
        """Cut the next `times` answers to requests for path (e.g. /api/2.0/mlflow/runs/update)."""
        with self._lock:
            self.pending[path] += times

    def cut_for(self, seconds: float) -> None:
        """Cut every answer that has a body, whatever its path, for the next seconds."""
        with self._lock:
            self._cut_until = time.monotonic() + seconds

    def _take_cut(self, path: str, has_body: bool) -> bool:
        with self._lock:
            self.requests[path] += 1
            if has_body and time.monotonic() < self._cut_until:
                self.cut_paths.append(path)
                return True
            if self.pending[path] <= 0:
                return False
            assert has_body, f"an empty answer to {path} cannot be cut midway"
            self.pending[path] -= 1
            self.cut_paths.append(path)
            return True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
