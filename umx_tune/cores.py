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
instead of training beside the others on too few. A study worker takes its cores before it claims a
trial (search/worker.py), so a waiting worker holds no trial. Cores are taken all at once or not at
all (no run holds some while it waits for more), and a core whose holder is stopped (Ctrl-Z,
SIGSTOP) counts as free, so a suspended run stalls nobody. A share that was given (`--threads`, the
environment) is taken as it is, without waiting.
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
    block runs (reserved), with torch's intra-op threads set to it (restored after)."""
    import torch

    previous = torch.get_num_threads()
    with reserved(threads, on_wait) as cores:
        torch.set_num_threads(cores)
        try:
            yield Share(threads=cores, loader_workers=min(nb_workers, cores), scoring_workers=cores)
        finally:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def reserved(threads: int, on_wait: Callable[[int], None] | None = None) -> Iterator[int]:
    """The number of cores a run asking for `threads` (0 = decide) may use, held while the block runs,
    with this process registered.

    Decided by the default rule, they are taken from the machine's core locks, waiting until enough
    are free (on_wait(cores) is called once if the run has to wait). Re-entrant: inside a block of this
    process that holds cores, those cores. Where the locks cannot be written (a read-only cache) the
    cores are not held: the run works, it only shares less well.
    """
    global _held
    with registered():
        given = threads or _env_threads()
        if given or _held:
            yield given or _held
            return
        try:
            count, locks = _take_cores(on_wait)
        except OSError:
            yield _default_share()
            return
        _held = count
        try:
            yield count
        finally:
            _held = 0
            _close(locks)


def _default_share() -> int:
    """The default rule: this machine's cores divided by the live umx-tune processes."""
    return max(1, machine_cores() // max(1, len(live_processes())))


def waiting_for(wanted: int) -> str:
    """What a run waiting for `wanted` free cores says."""
    return f"waiting for {wanted} free core(s) of {machine_cores()}: other umx-tune runs hold them"


def print_waiting(wanted: int) -> None:
    """reserved's on_wait for a command that shows its progress: the line on stderr."""
    print(waiting_for(wanted), file=sys.stderr)


def _take_cores(on_wait: Callable[[int], None] | None) -> tuple[int, list[IO[str]]]:
    """The default share's cores, decided again each look (processes come and go), and the open
    files holding their locks; waits, looking every CORE_POLL seconds, until that many are free.

    All at once or none: a run never holds some cores while it waits for others, so no two runs
    wait for each other's. A core locked by a stopped process counts as free (it is not locked
    again: such a core may be shared once its holder resumes).
    """
    folder = _registry() / "cores"
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        wanted = _default_share()
        held: list[IO[str]] = []
        borrowed = 0
        try:
            for core in range(machine_cores()):
                if len(held) + borrowed == wanted:
                    break
                path = folder / str(core)
                lock = path.open("a+")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another run holds this core
                    lock.close()
                    borrowed += _held_by_stopped_process(path)
                    continue
                held.append(lock)
                lock.truncate(0)
                lock.write(str(os.getpid()))  # who holds it, for a run that finds it locked
                lock.flush()
        except BaseException:
            _close(held)
            raise
        if len(held) + borrowed == wanted:
            return wanted, held
        _close(held)
        if on_wait is not None:
            on_wait(wanted)
            on_wait = None
        time.sleep(CORE_POLL)


def _close(locks: list[IO[str]]) -> None:
    """Free the cores whose lock files these are (closing a file frees its lock)."""
    for lock in locks:
        lock.close()


def _held_by_stopped_process(path: Path) -> bool:
    """Whether the core lock at path is held by a stopped process (state T or t: Ctrl-Z, SIGSTOP,
    a debugger), which may never run again to free it."""
    try:
        stat = Path(f"/proc/{int(path.read_text())}/stat").read_text()
    except (OSError, ValueError):  # no pid written yet, or the holder has just ended
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


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
