"""`umx-tune dashboard`: optuna-dashboard on the storage `optimize` uses, served until Ctrl-C.

The storage is found as `optimize` finds it (--storage, else UMX_TUNE_STORAGE, else derived from
the MLflow tracking URI; search/storage.py) and opened as a reader: nothing is created. The study
is checked and the port bound before the dashboard is announced, so a missing study or a port in
use is a one-line error and nothing is left running.
"""

from __future__ import annotations

import errno
import socketserver
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from optuna.storages import BaseStorage

from umx_tune.errors import ConfigError, first_line
from umx_tune.search import storage

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default
SHOWN_STUDIES = 10  # names an error lists before '…'


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """The dashboard's page loads several API calls at once: one thread per request."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: the terminal shows the URL and, at the end, that it stopped."""


@dataclass
class Dashboard:
    server: WSGIServer
    url: str  # the page to open: the study's, or the list of studies
    storage_url: str  # masked


def open_dashboard(storage_url: str, study_name: str | None, host: str, port: int) -> Dashboard:
    """The dashboard of the storage (and study), bound to host:port but not yet serving."""
    import optuna_dashboard

    reader = storage.open_reader(storage_url)
    study_id = _study_id(reader, study_name, storage.masked(storage_url))
    app = optuna_dashboard.wsgi(reader)
    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as err:
        in_use = "in use; choose another with --port" if err.errno == errno.EADDRINUSE else first_line(err)
        raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {in_use}") from None
    page = "/dashboard" if study_id is None else f"/dashboard/studies/{study_id}"
    return Dashboard(server, f"http://{host}:{server.server_port}{page}", storage.masked(storage_url))


def _study_id(reader: BaseStorage, study_name: str | None, where: str) -> int | None:
    """The named study's id (None without a name); ConfigError naming the studies there are."""
    names = sorted(s.study_name for s in reader.get_all_studies())
    if not names:
        raise ConfigError(f"Optuna storage {where} holds no study yet (`umx-tune optimize` creates one)")
    if study_name is None:
        return None
    if study_name not in names:
        listed = ", ".join(names[:SHOWN_STUDIES]) + (", …" if len(names) > SHOWN_STUDIES else "")
        raise ConfigError(f"no study {study_name!r} in Optuna storage {where}; it holds: {listed}")
    return reader.get_study_id_from_name(study_name)
