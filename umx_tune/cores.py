"""How many cores one umx-tune process may use, so that processes on one machine share its cores.

torch lets every process use all cores; two training processes on 2 cores then thrash each other
(measured: 4 to 8 times slower, not 2). Every process that trains or evaluates therefore registers
itself on the machine (a file named by its pid under the cache folder) for as long as it runs, and
each run sizes torch's intra-op threads, its DataLoader workers and its scoring pool from one share:
the cores it may use divided by the live umx-tune processes sharing them. Decided again at the start
of every run, so a study's workers adapt as workers come and go.

The share is, first found: the run's `threads` parameter (`--threads N`), the `UMX_TUNE_THREADS`
environment variable (the compose file and the Spark backend set it: processes in other containers or
Spark tasks cannot see each other's registrations), or cores // live registered processes.

A share decided by that last rule is also *held*: one lock file per core, taken for the run and freed
when it ends (or its process dies). With more processes than cores, a run waits for a free core
instead of running beside the others on too few (measured: 3 study workers on 2 cores took 1.13
times as long as 2 did). A study worker takes its cores before it claims a trial (search/worker.py),
so a waiting worker holds no trial. A share that was given (`--threads`, the environment) is taken
as it is, without waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from umx_tune.errors import ConfigError
from umx_tune.paths import cache_root

THREADS_ENV = "UMX_TUNE_THREADS"
CORE_POLL = 0.1  # seconds between looks for a free core of a run waiting for one

_held = 0  # cores this process holds now (reserved): a run inside a worker's reservation uses them


@dataclass(frozen=True)
class Share:
    """What one run uses: torch intra-op threads, DataLoader worker processes, scoring processes."""

    threads: int
    loader_workers: int
    scoring_workers: int


def machine_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota (docker --cpus)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota)) if quota is not None else max(1, cores)


def _cgroup_quota() -> int | None:
    """Cores allowed by cgroup v2's cpu.max ("max 100000" = none), rounded up; None without a quota."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return math.ceil(int(limit) / int(period))


def load_per_core() -> float:
    """The machine's 1-minute load average divided by the cores this process may use."""
    return os.getloadavg()[0] / machine_cores()


@contextlib.contextmanager
def sharing(threads: int, nb_workers: int, on_wait: Callable[[int], None] | None = None) -> Iterator[Share]:
    """The share of a run asking for `threads` (0 = decide) and `nb_workers` DataLoader workers
    (capped at the share: more loading processes than cores only fight the training), held while the
    block runs, with this process registered and torch's intra-op threads set to it (restored after);
    on_wait as reserved's."""
    import torch

    previous = torch.get_num_threads()
    with registered(), reserved(threads, on_wait) as cores:
        torch.set_num_threads(cores)
        try:
            yield Share(threads=cores, loader_workers=min(nb_workers, cores), scoring_workers=cores)
        finally:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def reserved(threads: int, on_wait: Callable[[int], None] | None = None) -> Iterator[int]:
    """The number of cores a run asking for `threads` (0 = decide) may use, held while the block runs.

    Decided by the default rule, they are taken from the machine's core locks, waiting until enough
    are free (on_wait(cores) is called once if the run has to wait). Re-entrant: inside a block of this
    process that holds cores, those cores. Where the locks cannot be written (a read-only cache) the
    cores are not held: the run works, it only shares less well.
    """
    global _held
    given = threads or _env_threads()
    if given or _held:
        yield given or _held
        return
    with registered():
        wanted = max(1, machine_cores() // max(1, len(live_processes())))
        try:
            locks = _take_cores(wanted, on_wait)
        except OSError:
            yield wanted
            return
        _held = wanted
        try:
            yield wanted
        finally:
            _held = 0
            for lock in locks:
                lock.close()  # closing the file frees its lock


def waiting_for(wanted: int) -> str:
    """What a run waiting for `wanted` free cores says."""
    return f"waiting for {wanted} free core(s) of {machine_cores()}: other umx-tune runs hold them"


def print_waiting(wanted: int) -> None:
    """reserved's on_wait for a command that shows its progress: the line on stderr."""
    print(waiting_for(wanted), file=sys.stderr)


def _take_cores(wanted: int, on_wait: Callable[[int], None] | None) -> list[IO[str]]:
    """Open files holding `wanted` of the machine's core locks, waiting until enough are free.

    One process at a time takes cores (the gate lock), so two runs that each hold some never wait
    for each other's: only runs that hold all they need hold any.
    """
    folder = _registry() / "cores"
    folder.mkdir(parents=True, exist_ok=True)
    held: dict[int, IO[str]] = {}
    with (folder / "gate").open("a") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            while True:
                for core in range(machine_cores()):
                    if core not in held and len(held) < wanted:
                        lock = (folder / str(core)).open("a")
                        try:
                            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            held[core] = lock
                        except BlockingIOError:  # another run holds this core
                            lock.close()
                if len(held) == wanted:
                    return list(held.values())
                if on_wait is not None:
                    on_wait(wanted)
                    on_wait = None
                time.sleep(CORE_POLL)
        except BaseException:
            for taken in held.values():
                taken.close()
            raise


def check_environment() -> None:
    """A bad UMX_TUNE_THREADS is an error before any work starts (ConfigError)."""
    _env_threads()


def _env_threads() -> int:
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r} is not allowed; give a whole number of threads >= 1")
    return int(text)


def _registry() -> Path:
    """This machine's registrations: by host name, as containers may share one cache volume and
    each counts pids in its own namespace."""
    return cache_root() / "processes" / socket.gethostname()


def live_processes() -> list[int]:
    """Pids of the registered umx-tune processes still running (stale registrations are removed)."""
    folder = _registry()
    if not folder.is_dir():
        return []
    alive = []
    for entry in folder.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            registered = entry.read_text()
        except OSError:  # unregistered while we looked
            continue
        if _start_time(pid) == registered:
            alive.append(pid)
        else:  # the process ended without unregistering (kill -9), or its pid was reused
            entry.unlink(missing_ok=True)
    return alive


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count the fields after its closing parenthesis
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """Count this process among those sharing the machine's cores while the block runs.

    Where the registry cannot be written (a read-only cache) the process runs uncounted: it still
    works, it only shares less well.
    """
    pid = os.getpid()
    entry = _registry() / str(pid)
    start = _start_time(pid)
    if pid in live_processes():  # an outer block of this process holds the registration
        yield
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(start or "")
    except OSError:
        yield
        return
    try:
        yield
    finally:
        entry.unlink(missing_ok=True)
