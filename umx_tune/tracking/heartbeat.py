"""A live run's heartbeat in MLflow, and reaping the runs whose process was killed.

A process killed with SIGKILL (or lost with its machine) cannot end its run, which would stay
RUNNING for good. So every run umx-tune starts beats from a thread while it is open: the tag
TAG_HEARTBEAT holds the unix time of the latest beat, TAG_HEARTBEAT_GRACE the seconds of silence
after which the run is lost. Whoever finds a lost run ends it FAILED with the reason: a new run
starting in the same experiment (`reap_lost_runs`), and the study audit (`optimize --check`).
A study's trials have Optuna's heartbeat besides (search/worker.py fails and requeues them); their
runs beat at the study's --heartbeat-interval. The first beat rides on the run's creation, and a
batch the run logs anyway carries the next one (Beat.tags), so the thread only speaks in silences.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from umx_tune.errors import TrackingError
from umx_tune.tracking import (
    ERROR_LIMIT,
    HEARTBEAT_INTERVAL,
    STATUS_FAILED,
    STATUS_RUNNING,
    TAG_ERROR,
    TAG_HEARTBEAT,
    TAG_HEARTBEAT_GRACE,
    filter_literal,
)
from umx_tune.tracking.client import Client


def grace(interval: int) -> int:
    """Seconds of silence after which a run (or trial) beating every interval is taken for dead:
    three missed beats, so that a busy machine (training saturates the cores) is not."""
    return max(3 * interval, interval + 5)


class Beat:
    """A run's heartbeat: when it last beat, and the tags of a beat."""

    def __init__(self, interval: int = HEARTBEAT_INTERVAL) -> None:
        self.interval = interval
        self.last = time.time()

    def first_tags(self) -> dict[str, int]:
        """The tags a run starts with: its first beat and its grace."""
        return {**self.tags(), TAG_HEARTBEAT_GRACE: grace(self.interval)}

    def tags(self) -> dict[str, int]:
        """A beat now, as the tag to log (in a batch that goes out anyway)."""
        self.last = time.time()
        return {TAG_HEARTBEAT: int(self.last)}

    def silence(self) -> float:
        """Seconds until the next beat is due."""
        return max(0.0, self.last + self.interval - time.time())


@contextmanager
def beating(client: Client, run_id: str, beat: Beat) -> Iterator[None]:
    """Beat the run's heartbeat while the block runs, whenever no batch has beaten for an interval
    (the run started with beat.first_tags)."""
    stop = threading.Event()

    def beat_in_silence() -> None:
        while not stop.wait(beat.silence()):
            if beat.silence() > 0:
                continue  # a batch beat meanwhile
            # a beat lost to an outage is no loss: the grace spans several beats
            with contextlib.suppress(TrackingError):
                client.log(run_id, tags=beat.tags())

    threading.Thread(target=beat_in_silence, name=f"heartbeat-{run_id}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()  # not joined: a beat waiting out an outage must not hold the run's end


def is_lost(tags: Mapping[str, str], status: str, now: float | None = None) -> bool:
    """Whether a run (its tags and status) is RUNNING with a heartbeat silent for longer than its
    grace. Runs without a heartbeat (made by other tools, or before umx-tune beat) are never lost."""
    if status != STATUS_RUNNING or TAG_HEARTBEAT not in tags:
        return False
    silent = (time.time() if now is None else now) - float(tags[TAG_HEARTBEAT])
    return silent > float(tags.get(TAG_HEARTBEAT_GRACE, grace(HEARTBEAT_INTERVAL)))


_reaped: dict[tuple[str, str], float] = {}  # (store, experiment id) -> when this process reaped


def reap_lost_runs(client: Client, experiment_id: str, every: float = 0.0) -> list[str]:
    """End FAILED, with the reason, every lost run of the experiment; returns their ids.

    With `every`, this process searches an experiment at most once per that many seconds: a worker
    starts run after run there, and a run is lost only after a grace of several intervals anyway.
    """
    key = (client.store, experiment_id)
    if time.monotonic() - _reaped.get(key, -math.inf) < every:
        return []
    running = client.search_runs([experiment_id], f"attributes.status = {filter_literal(STATUS_RUNNING)}")
    _reaped[key] = time.monotonic()
    lost = [r for r in running if is_lost(r.data.tags, r.info.status)]
    for run in lost:
        beat = datetime.datetime.fromtimestamp(float(run.data.tags[TAG_HEARTBEAT]), datetime.UTC)
        reason = f"lost: its process stopped beating at {beat:%Y-%m-%d %H:%M:%S} UTC (killed?)"
        client.set_tag(run.info.run_id, TAG_ERROR, reason[:ERROR_LIMIT])
        client.end_run(run.info.run_id, STATUS_FAILED)  # silently: the command's output is its own
    return [r.info.run_id for r in lost]
