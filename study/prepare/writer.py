"""Write one split file: atomic, resumable, in sorted group order, one image in memory at a time.

Why this shape: an HCV2 split is hours of decoding and hundreds of GB. The
split is written to ``<dataset>_<split>.h5.tmp`` and renamed only when every
listed sample is in it, so a ``<dataset>_<split>.h5`` on disk is always
complete. Each group gets the attribute ``complete`` last (after ``image`` and
``labels``) and the file is flushed, so a re-run after an interruption keeps
the finished groups, drops a half-written one and continues. Decoding may run
in worker processes; only the main process writes, in list order, with at most
two decoded images per worker waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np

from study.data.storage import file_storage, to_storage
from study.prepare.readers import PrepareError
from study.prepare.sources import Job, load_sample
from study.progress import result_of

COMPLETE_ATTR = "complete"
DIGEST_ATTR = "split_digest"


@dataclass(frozen=True)
class SplitResult:
    """What happened to one split: ``written`` new groups, ``kept`` from an interrupted run."""

    split: str
    path: Path
    status: str  # "written" | "exists"
    written: int
    kept: int
    seconds: float


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """One self-overwriting stderr line with rate and ETA (only on a terminal)."""

    def __init__(self, label: str, total: int, done: int = 0, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done, self.start_done = label, total, done, done
        self.stream = sys.stderr if stream is None else stream
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()

    def tick(self) -> None:
        self.done += 1
        if not self.live:
            return
        spent = time.perf_counter() - self.t0
        per = spent / max(1, self.done - self.start_done)
        eta = per * (self.total - self.done)
        self.stream.write(f"\r{self.label}: {self.done}/{self.total} images, {per:.1f} s/image, "
                          f"ETA {_fmt(eta)}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


def die_with_parent() -> None:
    """In a child process (the decoding pool's initializer): have the kernel kill it when its parent dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing). A parent that already died: exit now."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() == 1:  # the parent died before the call: nobody is left to collect this worker's work
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor | None:
    """Decoding processes shared by all splits of one run (spawned: no inherited HDF5 handles); None for 1."""
    if workers <= 1:
        return None
    # the workers die with this process, even when it is SIGKILLed (else they decode on, orphaned)
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_parent)


Decoded = tuple[str, dict[str, np.ndarray], np.ndarray]


def _decoded(jobs: Sequence[Job], pool: ProcessPoolExecutor | None, window: int) -> Iterator[Decoded]:
    """Decoded samples in ``jobs`` order; at most ``window`` of them decoded ahead when ``pool`` is given."""
    if pool is None:
        for job in jobs:
            yield load_sample(job)
        return
    pending: deque[Future[Decoded]] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(load_sample, job))
            if len(pending) >= window:
                yield result_of(pending.popleft())  # wakes for Ctrl+C / SIGTERM, whichever thread gets it
        while pending:
            yield result_of(pending.popleft())
    except KeyboardInterrupt:  # prepare() stops the workers; a cancel here races the pool's own clean-up
        pending.clear()
        raise
    finally:
        for fut in pending:
            fut.cancel()


def _storage_clash(path: Path, found: tuple[str, str], wanted: tuple[str, str], what: str) -> PrepareError | None:
    """An error when a file on disk was written with another --format / --storage-dtype than asked for."""
    if found == wanted:
        return None
    return PrepareError(f"{path}: {what} was written with --format {found[0]} --storage-dtype {found[1]}, not "
                        f"--format {wanted[0]} --storage-dtype {wanted[1]}; delete it or choose another --out")


def _open_partial(tmp: Path, digest: str, storage: tuple[str, str]) -> h5py.File:
    """The temporary file of an interrupted run (checked to be for the same list and storage), or a new one."""
    if tmp.exists():
        try:
            fh = h5py.File(tmp, "a")
        except OSError:
            print(f"note: {tmp} (left by an interrupted run) is unreadable; starting this split again",
                  file=sys.stderr)
            tmp.unlink()
        else:
            if fh.attrs.get(DIGEST_ATTR) != digest:
                fh.close()
                raise PrepareError(f"{tmp}: partial file of an interrupted run with a different split list "
                                   f"(or --hcv2-split); delete it to convert this split again with the current one")
            clash = _storage_clash(tmp, file_storage(fh.attrs), storage, "the partial file of an interrupted run")
            if clash is not None:
                fh.close()
                raise clash
            return fh
    return h5py.File(tmp, "w")


def convert_split(split: str, jobs: Sequence[Job], final: Path, attrs: dict[str, Any], *,
                  pool: ProcessPoolExecutor | None = None, window: int = 2,
                  stream: TextIO | None = None) -> SplitResult:
    """Write ``final`` from ``jobs`` (sorted by group), resuming ``final``.tmp if one is there.

    ``pool`` decodes in worker processes, at most ``window`` images ahead of the writer.
    """
    t0 = time.perf_counter()
    digest = str(attrs[DIGEST_ATTR])
    storage = file_storage(attrs)
    if final.exists():
        try:
            with h5py.File(final, "r") as fh:
                made, found = fh.attrs.get(DIGEST_ATTR), file_storage(fh.attrs)
        except OSError as exc:
            raise PrepareError(f"{final}: exists but cannot be read as HDF5 ({exc}); delete it and run again") from exc
        if made is not None and made != digest:
            raise PrepareError(f"{final}: exists but was made from a different split list (or --hcv2-split); "
                               "delete it or choose another --out to convert with the current one")
        clash = _storage_clash(final, found, storage, "it exists but")
        if clash is not None:
            raise clash
        return SplitResult(split, final, "exists", 0, 0, 0.0)
    jobs = sorted(jobs, key=lambda j: j.group)
    tmp = final.with_name(final.name + ".tmp")
    with _open_partial(tmp, digest, storage) as fh:
        for key, value in attrs.items():
            fh.attrs[key] = value
        todo, kept = [], 0
        wanted = {j.group for j in jobs}
        for name in [k for k in fh if k not in wanted]:  # cannot happen with the same digest; be safe
            del fh[name]
        for job in jobs:
            grp = fh.get(job.group)
            if grp is not None and grp.attrs.get(COMPLETE_ATTR, False):
                kept += 1
                continue
            if grp is not None:  # half-written when the last run stopped
                del fh[job.group]
            todo.append(job)
        progress = Progress(f"{attrs.get('dataset', '')} {split}", len(jobs), kept, stream)
        try:
            for group, arrays, labels in _decoded(todo, pool, window):
                stored = _stored(group, arrays, storage[1])
                grp = fh.create_group(group)
                for key, arr in stored.items():
                    grp.create_dataset(key, data=arr)
                grp.create_dataset("labels", data=labels)
                grp.attrs[COMPLETE_ATTR] = True  # last: marks the group finished for a resumed run
                fh.flush()
                progress.tick()
        finally:
            progress.close()
    os.replace(tmp, final)
    return SplitResult(split, final, "written", len(todo), kept, time.perf_counter() - t0)


def _stored(group: str, arrays: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """The sample's arrays as written: ``image`` / ``scores`` in the storage dtype, the rest as they are."""
    out = {}
    for key, arr in arrays.items():
        if key in ("image", "scores"):
            try:
                arr = to_storage(arr, dtype)
            except ValueError as exc:
                raise PrepareError(f"sample {group!r}: its {key} cannot be stored as {dtype}: {exc}; "
                                   "use --storage-dtype float32 or bfloat16") from exc
        out[key] = arr
    return out
