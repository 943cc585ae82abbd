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
instead of training beside the others on too few. Cores are taken all at once or not at all (no run
holds some while it waits for more), and a core whose holder is stopped (Ctrl-Z, SIGSTOP) counts as
free, so a suspended run stalls nobody. A share that was given (`--threads`, the environment) is
taken as it is, without waiting.

A study worker (`optimize`) *keeps* its cores from its start to its end (kept): it takes one core
before its heavy imports (torch, MLflow: about 6 s of CPU), so a worker that finds every core held
waits there at no cost; at each trial it resizes them to the share (rebalance), and it gives them up
for a moment to a run that waits and is not a worker of its study (a `train`, an `evaluate`,
another study's worker). A worker of its own study that waits is not let in: it would only pay its
start on cores that train. When a worker finds its study has nothing left, it leaves a mark, and a
worker of that study still waiting ends at once (finish_group).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
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
STEP_ASIDE = 1.0  # seconds at most a kept worker leaves its cores free for a waiting run to take

# the cores this process holds now (a run inside a holding block uses them): the open lock files of
# those it locked, and the names of those it borrowed from a stopped holder (counted, not locked)
_locks: list[IO[str]] = []
_borrowed: list[str] = []
_group = ""  # the study a worker that keeps its cores works for ("" for any other run)


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
    with registered():
        given = threads or _env_threads() or _held()
        if given:
            yield given
            return
        try:
            _take_cores(_default_share, on_wait)
        except OSError:
            yield _default_share()
            return
        try:
            yield _held()
        finally:
            _free(_held())


@contextlib.contextmanager
def kept(
    threads: int, group: str, on_wait: Callable[[int], None] | None, give_up: Callable[[], bool]
) -> Iterator[bool]:
    """A study worker's cores, held from its start to its end, with this process registered: one
    core taken at once, or after waiting for one (on_wait(1) is called then); rebalance resizes them
    at each trial. `group` names the worker's study (workers of one group do not give way to each
    other).

    Yields False, holding nothing, where the worker should not start: while it waited, a worker of
    its group marked the group finished (finish_group), or give_up() said so. A given share
    (`threads`, the environment) holds nothing and yields True, as does a read-only cache.

    While it waits to start, it lets any other run that waits (not another worker waiting to start)
    take a free core first: it would only pay its start on a core that run needs.
    """
    global _group
    with registered():
        if threads or _env_threads():
            yield True
            return
        _group = group
        try:
            try:
                taken = _take_cores(lambda: 1, on_wait, give_up, standby=True)
            except OSError:
                taken = True
            yield taken
        finally:
            _group = ""
            _free(_held())


def rebalance(on_wait: Callable[[int], None] | None, give_up: Callable[[], bool]) -> bool:
    """At a kept worker's trial (before it claims one): where a run that is not a worker of its
    group waits for a core, all its cores are freed, left free for that run to take (STEP_ASIDE at
    most), and the share taken again, waiting as any run does; otherwise its cores are resized to
    the default share (those above it freed, free ones taken up to it). Cores borrowed from a
    stopped holder are given back first (borrowed again if it is still stopped).

    False, holding nothing, where the wait ended because give_up() said so or a worker of its group
    marked it finished meanwhile; True otherwise, and outside kept (nothing done)."""
    if not _group:
        return True
    _borrowed.clear()
    if _others_waiting():
        _free(_held())
        deadline = time.monotonic() + STEP_ASIDE
        while _others_waiting() and time.monotonic() < deadline:
            time.sleep(CORE_POLL)
        return _take_cores(_default_share, on_wait, give_up)
    share = _default_share()
    if _held() > share:
        _free(_held() - share)
    elif _held() < share and not _look(share) and not _held():
        return _take_cores(_default_share, on_wait, give_up)
    return True


def finish_group() -> None:
    """A kept worker ends: its study has nothing left for it. The workers of its group waiting for a
    core then end too (kept and rebalance give up)."""
    if not _group:
        return
    with contextlib.suppress(OSError):
        path = _finished_mark(_group)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repr(time.time()))


def group_of(*parts: str) -> str:
    """A group name for a study worker: the same parts (its study, its storage, its folder), the same
    group."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _finished_mark(group: str) -> Path:
    return _registry() / "finished" / group


def _finished_since(began: float) -> bool:
    """Whether a worker of this process's group marked it finished at or after `began` (a
    time.time() value): an older mark is of an earlier run of the study, which may have been given
    work since."""
    try:
        return float(_finished_mark(_group).read_text()) >= began
    except (OSError, ValueError):  # no mark, or one being written
        return False


def _default_share() -> int:
    """The default rule: this machine's cores divided by the live umx-tune processes."""
    return max(1, machine_cores() // max(1, len(live_processes())))


def waiting_for(wanted: int) -> str:
    """What a run waiting for `wanted` free cores says."""
    return f"waiting for {wanted} free core(s) of {machine_cores()}: other umx-tune runs hold them"


def print_waiting(wanted: int, study: str | None = None) -> None:
    """reserved's on_wait for a command that shows its progress: the line on stderr (a study
    worker's begins with the study's name)."""
    print(f"{study}: {waiting_for(wanted)}" if study else waiting_for(wanted), file=sys.stderr)


def _take_cores(
    want: Callable[[], int],
    on_wait: Callable[[int], None] | None,
    give_up: Callable[[], bool] | None = None,
    standby: bool = False,
) -> bool:
    """Take want() cores (decided again each look: processes come and go) into this process's
    holding, waiting, looking every CORE_POLL seconds, until that many are free. While it waits the
    process is listed as waiting (with its group, for rebalance). False, holding nothing, where
    give_up() says so or, for a kept worker, a worker of its group marked the group finished since
    the wait began (asked before each look after the first: a run that finds its cores free starts,
    however short its time). A `standby` wait (a worker's start) does not look while another
    group's run waits that is not itself waiting to start.
    """
    began = time.time()
    waiting: Path | None = None
    announced = False
    try:
        while True:
            wanted = want()
            if not (standby and _others_waiting(standbys=False)) and _look(wanted):
                return True
            if not announced:
                announced, waiting = True, _list_waiting(standby)
                if on_wait is not None:
                    on_wait(wanted)
            time.sleep(CORE_POLL)
            # before the next look: a worker that finds its study done marks it, then frees its core
            if (give_up is not None and give_up()) or (_group and _finished_since(began)):
                return False
    finally:
        if waiting is not None:
            waiting.unlink(missing_ok=True)


def _look(wanted: int) -> bool:
    """One look at the core locks: take free ones until this process holds `wanted`, all or none
    (a run never holds some cores while it waits for others, so no two runs wait for each other's).
    A core locked by a stopped process counts as free (it is borrowed, not locked: such a core may
    be shared once its holder resumes)."""
    folder = _registry() / "cores"
    folder.mkdir(parents=True, exist_ok=True)
    mine = {Path(lock.name).name for lock in _locks} | set(_borrowed)
    taken: list[IO[str]] = []
    borrowed: list[str] = []
    try:
        for core in map(str, range(machine_cores())):
            if _held() + len(taken) + len(borrowed) >= wanted:
                break
            if core in mine:
                continue
            lock = (folder / core).open("a+")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another run holds this core
                lock.close()
                if _held_by_stopped_process(folder / core):
                    borrowed.append(core)
                continue
            taken.append(lock)
            lock.truncate(0)
            lock.write(str(os.getpid()))  # who holds it, for a run that finds it locked
            lock.flush()
    except BaseException:
        _close(taken)
        raise
    if _held() + len(taken) + len(borrowed) < wanted:
        _close(taken)
        return False
    _locks.extend(taken)
    _borrowed.extend(borrowed)
    return True


def _held() -> int:
    """How many cores this process holds now."""
    return len(_locks) + len(_borrowed)


def _free(count: int) -> None:
    """Give up `count` of the cores this process holds: borrowed ones first (only counted), then
    locked ones (closing a lock file frees its core)."""
    unborrowed = min(count, len(_borrowed))
    del _borrowed[len(_borrowed) - unborrowed :]
    unlocked = count - unborrowed
    _close(_locks[len(_locks) - unlocked :])
    del _locks[len(_locks) - unlocked :]


STANDBY = "standby"  # a waiting worker's kind: waiting to start (kept), not to run


def _list_waiting(standby: bool) -> Path | None:
    """List this process as waiting for cores (its start time, group and kind), for the holders that
    give way to it (rebalance); None where the registry cannot be written."""
    path = _registry() / "waiting" / str(os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{_start_time(os.getpid())}\n{_group}\n{STANDBY if standby else 'run'}")
    except OSError:
        return None
    return path


def _others_waiting(standbys: bool = True) -> bool:
    """Whether a live process that is not a worker of this process's group waits for cores (one
    waiting to start counts only with `standbys`; a stopped one never: it would take no core)."""
    folder = _registry() / "waiting"
    if not folder.is_dir():
        return False
    for entry in folder.iterdir():
        try:
            start, group, kind = entry.read_text().split("\n")
        except (OSError, ValueError):  # no longer waiting, or being written
            continue
        if _start_time(int(entry.name)) != start:  # ended while it waited (kill -9)
            entry.unlink(missing_ok=True)
        elif group != _group and (standbys or kind != STANDBY) and not _stopped(int(entry.name)):
            return True
    return False


def _close(locks: list[IO[str]]) -> None:
    """Free the cores whose lock files these are (closing a file frees its lock)."""
    for lock in locks:
        lock.close()


def _held_by_stopped_process(path: Path) -> bool:
    """Whether the core lock at path is held by a stopped process, which may never run again to
    free it."""
    try:
        return _stopped(int(path.read_text()))
    except ValueError:  # no pid written yet
        return False


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T or t: Ctrl-Z, SIGSTOP, a debugger); False if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
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
