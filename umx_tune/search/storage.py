"""The Optuna storage workers coordinate through: atomic claims of queued trials and heartbeats.

Default (no `--storage`, no UMX_TUNE_STORAGE), derived from the MLflow tracking URI:
- a local MLflow store (sqlite:///…/mlflow.db or a file store) gets `optuna.db` beside it;
- an http(s) tracking server gets a sqlite file in umx-tune's cache, named after the server, with a
  warning: workers on one machine share it, workers on other machines need `--storage` (an RDB URL
  such as postgresql://…, or grpc://host:port for Optuna's storage proxy).
The MLflow parent run records the storage, and a worker pointed at another storage for a study
that MLflow already knows is stopped (see setup.py), so a forgotten `--storage` cannot split a study.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial

from umx_tune.errors import ConfigError, first_line
from umx_tune.paths import cache_root
from umx_tune.tracking.heartbeat import grace as grace_period

STORAGE_ENV = "UMX_TUNE_STORAGE"
_SQLITE_ENGINE = {"connect_args": {"timeout": 60}}  # seconds a connection waits for another's lock
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: int  # seconds between a running trial's heartbeats
    grace: int  # a RUNNING trial without a heartbeat for this long belongs to a dead worker

    @classmethod
    def every(cls, interval: int) -> HeartbeatSettings:
        # the grace of the trial runs' heartbeats in MLflow too
        return cls(interval=interval, grace=grace_period(interval))


def default_url(tracking_uri: str, warn: bool = True) -> str:
    """The storage URL derived from the tracking URI (see the module docstring)."""
    env = os.environ.get(STORAGE_ENV)
    if env:
        return env
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return f"sqlite:///{db.parent / 'optuna.db'}"
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        store = Path(urllib.parse.urlparse(tracking_uri).path if "://" in tracking_uri else tracking_uri)
        return f"sqlite:///{store.parent / 'optuna.db'}"
    if tracking_uri.startswith(("http://", "https://")):
        netloc = urllib.parse.urlparse(tracking_uri).netloc
        path = cache_root() / "optuna" / f"{re.sub(r'[^A-Za-z0-9.-]', '_', netloc)}.db"
        if warn:
            print(
                f"umx-tune: note: Optuna storage {path} (local to this machine); workers on other "
                f"machines need --storage or {STORAGE_ENV} (e.g. postgresql://… or grpc://host:port)",
                file=sys.stderr,
            )
        return f"sqlite:///{path}"
    raise ConfigError(
        f"cannot derive an Optuna storage from tracking URI {tracking_uri!r}; pass --storage URL"
    )


def masked(url: str) -> str:
    """The URL without a password, for tags and messages."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def exists(url: str) -> bool:
    """False for a sqlite storage whose file is not there yet (opening it would create it)."""
    return not url.startswith("sqlite:///") or Path(url[len("sqlite:///") :]).is_file()


def open_storage(url: str, heartbeat: HeartbeatSettings, on_stale: StaleCallback) -> BaseStorage:
    """A worker's storage: an RDBStorage with heartbeats (or a gRPC proxy client for grpc://host:port)."""
    if url.startswith("grpc://"):
        return _grpc(url, worker=True)
    kwargs: dict[str, Any] = {
        "heartbeat_interval": heartbeat.interval,
        "grace_period": heartbeat.grace,
        "heartbeat_stale_trial_callback": on_stale,
    }
    if url.startswith("sqlite:///"):
        return _opened(url, lambda: _sqlite(url, kwargs))
    return _opened(url, lambda: _server_rdb(url, kwargs))


def open_reader(url: str) -> BaseStorage:
    """The storage of studies that already exist, for reading them (the dashboard).

    A sqlite file that does not exist is a ConfigError, not a new empty storage. No heartbeats,
    and sqlite's own locking: a reader's transactions need not take the write lock that workers'
    claims take (_serialize_transactions).
    """
    if url.startswith("grpc://"):
        return _grpc(url, worker=False)
    if not url.startswith("sqlite:///"):
        return _opened(url, lambda: RDBStorage(url))
    path = Path(url[len("sqlite:///") :])
    if not path.is_file():
        raise ConfigError(
            f"no Optuna storage at {path}: no study has run with this tracking setup "
            f"(`umx-tune optimize` creates it); pass --storage URL or set {STORAGE_ENV}"
        )
    return _opened(url, lambda: RDBStorage(url, engine_kwargs=_SQLITE_ENGINE))


def _opened(url: str, open_it: Callable[[], BaseStorage]) -> BaseStorage:
    """open_it(), with Optuna's and SQLAlchemy's refusals as one-line ConfigErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
            return open_it()
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as err:
        raise ConfigError(f"cannot open Optuna storage {masked(url)}: {first_line(err)}") from None
    except Exception as err:  # sqlalchemy's errors for unreachable databases
        if type(err).__module__.startswith("sqlalchemy"):
            raise ConfigError(f"cannot open Optuna storage {masked(url)}: {first_line(err)}") from None
        raise


def _server_rdb(url: str, kwargs: dict[str, Any], attempts: int = 5) -> RDBStorage:
    """RDBStorage on a database server (PostgreSQL, MySQL), safe when workers start together.

    On an empty database every worker creates Optuna's tables; creations that race fail with a
    duplicate-key or duplicate-table error in all but one worker (seen with three workers on a
    fresh PostgreSQL, as `docker compose up --scale worker=3` starts them). Opening again then
    finds the tables the winner made. A race lost inside one of Optuna's sessions (its version row)
    comes as Optuna's StorageInternalError instead (seen with three workers in benchmarks/chaos.py).
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    lost_race = (IntegrityError, ProgrammingError, optuna.exceptions.StorageInternalError)
    # a connection the database dropped (a restart, pg_terminate_backend) is replaced when it is
    # next taken from the pool, instead of failing the next statement (benchmarks/chaos.py)
    engine = {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            return RDBStorage(url, engine_kwargs=engine, **kwargs)
        except lost_race:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())  # let the winner commit; spread the retries
    raise AssertionError("unreachable")


def _sqlite(url: str, kwargs: dict[str, Any]) -> RDBStorage:
    """RDBStorage on sqlite, made safe for several processes.

    Optuna claims a WAITING trial by reading its state and then writing RUNNING; its trial numbers
    are a count followed by an insert. Both rely on SELECT … FOR UPDATE, which SQLite ignores, and
    Python's sqlite3 starts a transaction only at the first write, so two workers can both read
    WAITING and both claim the trial. Starting every transaction with BEGIN IMMEDIATE takes SQLite's
    write lock before the read, which makes each of those read-then-write steps atomic.
    """
    path = Path(url[len("sqlite:///") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    # table creation is not safe to race either: the first opener creates, others wait
    with _file_lock(path.with_name(path.name + ".lock")):
        storage = RDBStorage(url, engine_kwargs=_SQLITE_ENGINE, **kwargs)
    _serialize_transactions(storage.engine)
    return storage


def _serialize_transactions(engine: Any) -> None:
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below start transactions

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections opened during set-up lack the listeners


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _grpc(url: str, worker: bool) -> BaseStorage:
    parsed = urllib.parse.urlparse(url)
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"storage {url!r}: expected grpc://host:port")
    try:
        from optuna.storages import GrpcStorageProxy

        storage = GrpcStorageProxy(host=parsed.hostname, port=parsed.port)
    except ImportError as err:
        raise ConfigError(f"storage {url}: the gRPC proxy client needs grpcio ({err})") from None
    if worker:  # Optuna's proxy does not pass heartbeats through: a killed worker's trial stays RUNNING
        print(
            "umx-tune: warning: Optuna's gRPC storage proxy has no heartbeats; a killed worker's "
            "trial is not failed automatically",
            file=sys.stderr,
        )
    return storage
