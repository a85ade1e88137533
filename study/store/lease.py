"""One writer per remote results location: a lease object, renewed while a study runs.

``fcntl`` locks do not exist on object stores, so :func:`lease` writes ``<results>/.lock.json``
instead (its docstring says what that can and cannot promise). :func:`results_lock` is the one-writer
lock for both kinds of location (an fcntl lock on a local folder); the lease needs only a
:class:`~study.store.location.Location`'s read, write and delete. The constants are read from this module,
so code that changes one (tests shortening ``LEASE_SETTLE_S``)
sets it here, not on the package face.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from study.errors import HsiStudyError
from study.store.location import Location, open_results

LEASE = ".lock.json"
#: A lease not renewed for this long is stale (its owner died); the owner renews it every LEASE_RENEW_S.
LEASE_TTL_S = 600.0
LEASE_RENEW_S = 60.0
#: Pause between writing a lease and reading it back (see :func:`lease`).
LEASE_SETTLE_S = 1.0


def _owner_alive(lease: dict) -> bool:
    """On the owner's own host a dead pid frees the lease at once (like a released flock)."""
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lease.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def read_lease(loc: Location) -> dict | None:
    try:
        return json.loads(loc.read_text(LEASE))
    except FileNotFoundError:
        return None
    except ValueError:  # unreadable: treat as held, the user must look at it
        return {"owner": "an unreadable lease", "renewed": time.time()}


@contextlib.contextmanager
def lease(loc: Location, ttl_s: float = LEASE_TTL_S, renew_s: float = LEASE_RENEW_S) -> Iterator[None]:
    """One writer per remote results location: a lease object ``<results>/.lock.json``, renewed while held.

    Best effort, said plainly: pyarrow has no conditional put (if-none-match), so two runs that start
    at the same moment can both find no lease and both write one. Each waits ``LEASE_SETTLE_S`` after
    writing, reads the lease back, and backs off unless its own token is there (the last write wins on
    S3 and GCS, which are strongly consistent). Both could go on only if one of them took longer than
    that pause between reading "no lease" and writing its own, i.e. a PUT slower than a second.

    A lease is fresh while it was renewed less than ``ttl_s`` ago (the holder renews every ``renew_s``);
    a fresh lease of another owner makes the second run stop with the same message as the local lock.
    A lease left by a crashed run is stale after ``ttl_s``, or at once on the host where its pid no
    longer exists; to take over earlier, delete ``<results>/.lock.json`` (e.g. ``aws s3 rm
    s3://bucket/prefix/.lock.json``). Renewal compares the writer's clock with the reader's, so hosts
    must agree on the time to well within ``ttl_s`` (NTP does).
    """
    _refuse_if_held(loc, ttl_s)
    me = _claim(loc)
    renewal = _Renewal(loc, me, renew_s)
    renewal.thread.start()
    try:
        yield
    finally:
        renewal.release()
    if renewal.lost is not None:  # reached only when the study itself ended normally: say so rather than exit 0
        raise HsiStudyError(
            f"{loc.show()}: this run lost its lease to {renewal.lost} while it ran (it stalled for longer than "
            f"{ttl_s:.0f} s, or the lease was deleted), so two runs may have written there; the rows are "
            "whole files either way: re-run the same command once the other run has finished to check "
            "that every cell is complete")


def _refuse_if_held(loc: Location, ttl_s: float) -> None:
    """Stop, as the local lock does, while another live run holds a fresh lease on ``loc``."""
    held = read_lease(loc)
    if held is not None and time.time() - float(held.get("renewed", 0)) < ttl_s and _owner_alive(held):
        age = time.time() - float(held.get("renewed", 0))
        raise HsiStudyError(
            f"{loc.show()} is in use by another study.run ({held.get('owner', 'unknown')}, lease renewed "
            f"{age:.0f} s ago); wait for it to finish or use another --results. If that run is dead, delete "
            f"{loc.show(LEASE)} (a lease not renewed for {ttl_s:.0f} s expires by itself)")


def _write_lease(loc: Location, me: dict) -> None:
    """(Re)write our lease with the time of this renewal."""
    loc.write_text(LEASE, json.dumps({**me, "renewed": time.time()}))


def _claim(loc: Location) -> dict:
    """Write our lease and read it back after ``LEASE_SETTLE_S``: of two runs that claimed at once, one backs off."""
    token = uuid.uuid4().hex
    me = {"owner": f"pid {os.getpid()} on {socket.gethostname()}", "host": socket.gethostname(),
          "pid": os.getpid(), "token": token, "created": time.time()}
    _write_lease(loc, me)
    time.sleep(LEASE_SETTLE_S)
    if (read_lease(loc) or {}).get("token") != token:
        raise HsiStudyError(f"{loc.show()} was claimed by another study.run at the same moment; "
                            "use another --results or retry when it has finished")
    return me


class _Renewal:
    """Renews our lease every ``renew_s`` on a daemon thread, so it stays fresh while the study runs."""

    def __init__(self, loc: Location, me: dict, renew_s: float) -> None:
        self.loc, self.me, self.renew_s = loc, me, renew_s
        self.stop = threading.Event()
        # renewal and release never overlap: a slow renewal PUT that finished after the release's delete
        # would leave a fresh-looking lease of a finished run behind for ttl_s
        self.guard = threading.Lock()
        self.lost: str | None = None  # set once another run's lease replaced ours (we stalled past ttl_s)
        self.thread = threading.Thread(target=self._renew, name="hsistudy-lease", daemon=True)

    def _renew(self) -> None:
        """Rewrite the lease while it is still ours; warn once when another run's lease replaced it."""
        while not self.stop.wait(self.renew_s):
            with self.guard, contextlib.suppress(OSError):  # a missed renewal is retried; ttl_s covers several
                if self.stop.is_set():
                    return
                current = read_lease(self.loc) or {}
                if current.get("token") == self.me["token"]:
                    _write_lease(self.loc, self.me)
                elif self.lost is None:
                    self.lost = str(current.get("owner", "no one (the lease was deleted)"))
                    print(f"warning: {self.loc.show(LEASE)} is now held by {self.lost}: this run lost its "
                          "one-writer lease and will stop with an error when it ends", file=sys.stderr)

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (never another run's)."""
        self.stop.set()
        with self.guard, contextlib.suppress(OSError):
            if (read_lease(self.loc) or {}).get("token") == self.me["token"]:
                self.loc.delete_file(LEASE)
        self.thread.join(timeout=5)


@contextlib.contextmanager
def results_lock(results: Path | str | Location) -> Iterator[None]:
    """One writer per results location: a second ``study.run`` stops with a clear message.

    A local folder gets an fcntl lock (released by the kernel when the holder dies); an object store,
    which has no locks, a renewed lease object (:func:`lease`: best effort, see there). Resolving
    and probing the location here makes a bad URI, a missing bucket or missing credentials fail with
    one line before anything is prepared or trained.
    """
    loc = open_results(results)
    if not loc.is_local:
        with lease(loc):
            yield
        return
    folder = loc.local()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole study
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise HsiStudyError(
            f"{loc.show()} is in use by another study.run ({holder}); wait for it to finish or use another --results"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
