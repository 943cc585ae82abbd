"""SIGTERM cleans up as Ctrl-C does.

`docker stop`, `kill` and batch schedulers stop a process with SIGTERM, whose default action ends
it at once: its trial and run would stay RUNNING until a heartbeat reaps them. The CLI turns
SIGTERM into Terminated, a KeyboardInterrupt, so that every cleanup written for Ctrl-C (a trial
failed and queued again, a run ended KILLED with its reason, a study's parent ended) runs for it too.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

TERMINATED_EXIT = 128 + signal.SIGTERM  # a shell's status for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised in the main thread, where the signal is handled)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    # the cleanup must finish: a second SIGTERM (an impatient supervisor) is ignored; SIGKILL is not
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("terminated (SIGTERM)")


def terminate_like_ctrl_c() -> None:
    """Raise Terminated in the main thread on SIGTERM from now on (where this is the main thread:
    only it may handle signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def interruption(err: KeyboardInterrupt) -> str:
    """What stopped the process, for a run's or trial's reason: Ctrl-C or SIGTERM."""
    return str(err) if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
