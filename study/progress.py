"""Study-wide state shared by the cells that run at once: the stop switch and the progress line.

Every pending cell of a study runs its own Tuner in its own driver thread
(:func:`study.orchestration.driver.run_pending_cells`), so one Ctrl+C must reach all of them and one
line must summarise them. Tune pickles its callbacks and stoppers into each
experiment's state, and locks and events do not pickle; so those objects hold
only the study's key, and the live :class:`StudyControl` sits in a module-level
registry of the driver process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CONTROLS: dict[str, StudyControl] = {}
#: at most one progress line per this many seconds (plus one at every cell start and end)
PROGRESS_EVERY_S = 10.0
#: at most one live per-trial line (latest epoch and val mIoU) per this many seconds, study-wide
LIVE_EVERY_S = float(os.environ.get("HSISTUDY_LIVE_S", 5.0))
#: on a terminal: back to the line start and clear it (the refreshed live line is written without a newline)
CLEAR = "\r\x1b[K"


def pct(value: float | None, digits: int = 1) -> str:
    """An mIoU or OA (a fraction in the store) as the console and the report show it: in %, with the sign."""
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def is_tty() -> bool:
    """Whether the console is a terminal (a refreshed live line) or a log (one line per event)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class StudyControl:
    """The stop switch and the counters behind the study's progress line."""

    key: str
    cells_total: int
    trials_total: int  # trial budget of the pending cells: tuning trials + final seeds
    echo: Callable[[str], None]
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    t0: float = field(default_factory=time.monotonic)
    cells_done: int = 0
    cells_running: int = 0
    trials_done: int = 0
    trials_running: int = 0
    last_event: float = field(default_factory=time.monotonic)  # a trial started or ended (the stall watchdog)
    error: str | None = None  # why the study stopped itself (a stall), raised by the driver once all cells ended
    #: running trials' latest report: (cell label, trial id) -> (epoch, max epochs, val mIoU)
    live: dict[tuple[str, str], tuple[int, int | None, float | None]] = field(default_factory=dict)
    _last: float = 0.0
    _last_live: float = 0.0

    def trial_result(self, label: str, trial_id: str, epoch: int, max_epochs: int | None,
                     val_miou: float | None) -> None:
        """A trial reported an epoch: show it, at most every :data:`LIVE_EVERY_S` seconds for the whole study
        (a 100-epoch trial is no longer silent until it ends). A log gets one line for this event; a terminal
        one refreshed line over every running trial."""
        with self.lock:
            self.live[(label, trial_id)] = (epoch, max_epochs, val_miou)
            now = time.monotonic()
            if now - self._last_live < LIVE_EVERY_S:
                return
            self._last_live = now
            tty = is_tty()
            shown = list(self.live.items()) if tty else [((label, trial_id), self.live[(label, trial_id)])]
        parts = [f"[{lab}] trial {tid} epoch {ep}{f'/{mx}' if mx else ''}: val mIoU {pct(v)}"
                 for (lab, tid), (ep, mx, v) in shown[:4]]
        more = f" · +{len(shown) - 4} more" if len(shown) > 4 else ""
        if tty:  # one terminal row, or clearing it would leave the wrapped rest behind
            width = shutil.get_terminal_size().columns - 1
            sys.stdout.write(CLEAR + ("  " + " · ".join(parts) + more)[:width])
            sys.stdout.flush()
        else:
            self.echo("  " + parts[0])

    def trial_ended(self, label: str, trial_id: str) -> None:
        with self.lock:
            self.live.pop((label, trial_id), None)

    def update(self, force: bool = False, **delta: int) -> None:
        """Apply counter changes (e.g. ``trials_running=+1``) and print the line when it is due."""
        with self.lock:
            for name, d in delta.items():
                setattr(self, name, getattr(self, name) + d)
            now = time.monotonic()
            if delta.get("trials_running") or delta.get("trials_done"):
                self.last_event = now
            if not force and now - self._last < PROGRESS_EVERY_S:
                return
            self._last = now
            line = self.line(now)
        self.echo(line)

    def line(self, now: float) -> str:
        pending = self.cells_total - self.cells_done - self.cells_running
        elapsed = now - self.t0
        eta = "–"
        if self.trials_done:
            left = max(0, self.trials_total - self.trials_done) * elapsed / self.trials_done
            eta = f"~{left / 60:.0f} min" if left >= 60 else f"~{left:.0f} s"
        return (f"[study] cells {self.cells_done} done / {self.cells_running} running / {pending} pending · "
                f"trials {self.trials_running} running, {self.trials_done}/{self.trials_total} done · "
                f"{elapsed / 60:.1f} min elapsed, ETA {eta}")


def register(control: StudyControl) -> StudyControl:
    _CONTROLS[control.key] = control
    return control


def unregister(key: str) -> None:
    _CONTROLS.pop(key, None)


def control(key: str | None) -> StudyControl | None:
    """The live control of a study in this process, or None (a test calling tune_cell on its own)."""
    return _CONTROLS.get(key) if key else None


def stopped(key: str | None) -> bool:
    c = control(key)
    return c is not None and c.stop.is_set()


def echo(message: str) -> None:
    """Print one console line; on a terminal it first clears the refreshed live line
    (:meth:`StudyControl.trial_result`). Lives here, not with Ray, so that input checks print without Ray."""
    print(CLEAR + message if is_tty() else message, flush=True)


#: what ``python -m study.run`` says when it was stopped (exit 130)
RESUME_HINT = ("interrupted: finished trials and cells are in the store; re-run the same command to continue "
               "(unfinished cells resume, their finished trials are replayed, not re-trained)")
#: how often a waiting main thread wakes to act on a signal another thread received
SIGNAL_POLL_S = 0.5


class StopSignals:
    """SIGINT and SIGTERM, however they arrive: the first raises :class:`KeyboardInterrupt` in the main thread
    (the command stops its work and keeps what finished); a second one prints ``hint``, runs ``hard_stop``
    (kill child processes) and ends the process at once with exit 130. Every store write is a temp file
    renamed into place, so an abrupt end leaves nothing half-written.

    The main thread must not block without a timeout (:func:`wait_futures`): Python runs a signal handler
    in the main thread only, and a process-directed signal is often delivered to another thread (Ray's,
    a pool's), which only sets a flag. Ray's ``init`` installs its own SIGTERM handler; call
    :meth:`install` again after it. Outside the main thread (a notebook's worker thread) nothing is installed.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, hint: str, hard_stop: Callable[[], None] | None = None, at_once: bool = True,
                 keep: bool = False) -> None:
        self.hint, self.hard_stop, self.received = hint, hard_stop, 0
        #: stay installed after the block, until the process exits: a second Ctrl+C during the exit (Ray's
        #: atexit shutdown takes seconds) still stops at once instead of printing a traceback from there
        self.keep = keep
        #: False where the process is not ours to end (a notebook's kernel calling ``study.api``): a second signal
        #: then raises KeyboardInterrupt again, which abandons the wait for the cells
        self.at_once = at_once
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1
        if self.received == 1 or not self.at_once:
            raise KeyboardInterrupt
        with contextlib.suppress(BaseException):
            print(f"\n{signal.Signals(signum).name} again: stopping at once", file=sys.stderr, flush=True)
            if self.hard_stop is not None:
                self.hard_stop()
            print(self.hint, file=sys.stderr, flush=True)
        os._exit(130)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current != self._handle:
                self.previous.setdefault(sig, current)
                signal.signal(sig, self._handle)

    def restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def __enter__(self) -> StopSignals:
        self.install()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if not self.keep:
            self.restore()


_ACTIVE: list[StopSignals] = []


def reinstall_signals() -> None:
    """Put the active :class:`StopSignals` back on top (``ray.init`` installs its own SIGTERM handler, which
    ends the process with exit 1 and no resume hint)."""
    if _ACTIVE:
        _ACTIVE[-1].install()


def result_of(fut: Future) -> Any:
    """``fut.result()`` in a main thread that stays responsive to signals (:func:`wait_futures`' poll)."""
    wait_futures([fut], raise_errors=False)
    return fut.result()


def wait_futures(futures: Iterator | list, raise_errors: bool = True) -> None:
    """Wait for every future, waking every :data:`SIGNAL_POLL_S` so the main thread acts on a signal;
    ``raise_errors``: re-raise the first failed future's exception as soon as it is seen."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=SIGNAL_POLL_S, return_when=FIRST_COMPLETED)
        if raise_errors:
            for fut in done:
                fut.result()


def descendants(pid: int | None = None) -> list[int]:
    """The ids of ``pid``'s (default: this process's) child processes, their children and so on, parents
    first; read from ``/proc`` (Linux; elsewhere an empty list)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        kids = parents.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def kill_children() -> None:
    """SIGKILL this process's descendants (a local Ray's processes, a pool's workers), children last: the
    hard stop of a second Ctrl+C."""
    for pid in reversed(descendants()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
