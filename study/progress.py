"""Study-wide state shared by the cells that run at once: the stop switch and the progress line.

Every pending cell of a study runs its own Tuner in its own driver thread
(:func:`study.driver.run_study`), so one Ctrl+C must reach all of them and one
line must summarise them. Tune pickles its callbacks and stoppers into each
experiment's state, and locks and events do not pickle; so those objects hold
only the study's key, and the live :class:`StudyControl` sits in a module-level
registry of the driver process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.stopper import Stopper

_CONTROLS: dict[str, StudyControl] = {}
#: at most one progress line per this many seconds (plus one at every cell start and end)
PROGRESS_EVERY_S = 10.0


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
    _last: float = 0.0

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


class StopOnRequest(Stopper):
    """Tune stopper that ends every trial of a Tuner once the study is asked to stop (Ctrl+C, SIGTERM)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return stopped(self.key)

    def stop_all(self) -> bool:
        return stopped(self.key)
