"""One host copy of a split per node, shared by every trial there: a memory-mapped file in shared memory.

Why a file in ``/dev/shm`` and not Ray's object store: a copy must outlive the trial that made it (the next
trial of the cell, the other cells reading the same val and test splits) without an owner process to keep a
reference alive, and any process of the node, Ray worker or not, maps it by name. The pages are shared: a
node holds each copy once, however many trials map it.

Written once per node: the first process that needs a copy takes an exclusive lock (``<key>.lock``), fills
``.<key>.<pid>.<rand>.tmp`` (space reserved first with ``posix_fallocate``, so a full ``/dev/shm`` is an
OSError, not a SIGBUS), writes the end marker last and renames the file to ``<key>.bin``; the others wait on
the lock and map the finished file. A file whose size, header (the key and the sections' layout) or end marker
is not what the opener expects (damaged, truncated, written by another version) is never used: it is replaced.

Cleaned up: each process that maps a copy holds a shared ``flock`` on it until :meth:`SharedCopy.close`. A copy
that nobody holds and nobody opened for :data:`IDLE_S` is removed by the next writer on the node; a study
removes the unused copies on its own node when it ends (:func:`sweep` with ``idle_s=0``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.filelock import file_lock

#: where the copies live: this variable, else ``/dev/shm/hsistudy-<uid>`` (the temp folder without /dev/shm)
DIR_ENV = "HSISTUDY_SHM_DIR"
MAGIC = b"HSISTUDY-NODE-COPY-1\n"
END = b"HSISTUDY-END-OF-COPY\n"
#: a copy nobody has opened for this long and nobody holds is removed by the next writer on the node
IDLE_S = 3600.0
_ALIGN = 64
_PAGE = 4096


def copy_dir() -> Path:
    """The node's folder of shared copies (:data:`DIR_ENV`, else ``/dev/shm/hsistudy-<uid>``)."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"hsistudy-{os.getuid()}"


@dataclass(frozen=True)
class Section:
    """One array of a copy: its name, numpy dtype and element count."""

    name: str
    dtype: str
    count: int


def layout(key: str, sections: Sequence[Section]) -> tuple[bytes, dict[str, int], int]:
    """(header bytes, byte offset of each section, total file size): the header names the key and the sections,
    so a file made for other data or by another layout is recognised as not this copy."""
    meta = json.dumps({"key": key, "sections": [[s.name, s.dtype, int(s.count)] for s in sections]}).encode()
    header = MAGIC + len(meta).to_bytes(8, "little") + meta
    pos = -(-len(header) // _PAGE) * _PAGE
    offsets = {}
    for s in sections:
        offsets[s.name] = pos
        pos += -(-int(s.count) * np.dtype(s.dtype).itemsize // _ALIGN) * _ALIGN
    return header, offsets, pos + len(END)


class SharedCopy:
    """A mapped copy: its sections as numpy arrays. Copy-on-write pages: the node's copy is never written through
    them (a write would stay in this process). :meth:`close` unmaps it and lets it be swept."""

    def __init__(self, path: Path, fd: int, size: int, offsets: dict[str, int], sections: Sequence[Section],
                 written: bool) -> None:
        self.path, self.written = path, written
        self._fd: int | None = fd
        self._map = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        self.arrays = {s.name: np.frombuffer(self._map, dtype=s.dtype, count=int(s.count), offset=offsets[s.name])
                       for s in sections}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def close(self) -> None:
        """Unmap (once no array of it is referenced any more) and release the shared lock."""
        self.arrays = {}
        with contextlib.suppress(BufferError):  # a caller still holds a view: the map goes with it
            self._map.close()
        if self._fd is not None:
            os.close(self._fd)  # drops the shared flock
            self._fd = None


def open_copy(key: str, sections: Sequence[Section], fill: Callable[[dict[str, np.ndarray]], None],
              folder: Path | None = None) -> SharedCopy:
    """This node's copy named ``key``, written first (``fill`` gets the sections to write into) when there is no
    complete one; concurrent callers write it once. :attr:`SharedCopy.written` says whether this call wrote it."""
    folder = Path(folder) if folder is not None else copy_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{key}.bin"
    header, offsets, size = layout(key, sections)
    with file_lock(folder / f"{key}.lock"):
        fd, written = _open_valid(path, header, size), False
        if fd is None:
            sweep(folder, IDLE_S, keep=key)
            _write(path, header, offsets, size, sections, fill)
            fd, written = _open_valid(path, header, size), True
            if fd is None:
                raise OSError(f"{path}: the copy just written does not read back whole")
        fcntl.flock(fd, fcntl.LOCK_SH)  # in use until closed: never swept meanwhile
        os.utime(path)  # its last use, for the idle sweep
    return SharedCopy(path, fd, size, offsets, sections, written)


def present_bytes(key: str, folder: Path | None = None) -> int:
    """Bytes of the copy ``key`` already on this node (0 when there is none): what using it again costs nothing."""
    path = (Path(folder) if folder is not None else copy_dir()) / f"{key}.bin"
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _open_valid(path: Path, header: bytes, size: int) -> int | None:
    """A read-only descriptor of ``path`` when it is the whole copy ``header`` describes, else None (an invalid
    file is removed: the caller holds the key's lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        ok = (os.fstat(fd).st_size == size and os.pread(fd, len(header), 0) == header
              and os.pread(fd, len(END), size - len(END)) == END)
    except OSError:
        ok = False
    if ok:
        return fd
    os.close(fd)
    path.unlink(missing_ok=True)
    return None


def _write(path: Path, header: bytes, offsets: dict[str, int], size: int, sections: Sequence[Section],
           fill: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Fill a temporary file and rename it into place; the end marker is written after everything else."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)  # a full /dev/shm fails here (ENOSPC), not as a SIGBUS mid-fill
        with mmap.mmap(fd, size) as mm:
            mm[: len(header)] = header
            arrays = {s.name: np.frombuffer(mm, dtype=s.dtype, count=int(s.count), offset=offsets[s.name])
                      for s in sections}
            try:
                fill(arrays)
            finally:
                arrays.clear()
            mm[size - len(END):] = END
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def sweep(folder: Path | None = None, idle_s: float = IDLE_S, keep: str | None = None) -> list[Path]:
    """Remove the copies (and the temporary files of writers that died) that no process holds and that were not
    opened for ``idle_s`` seconds; ``keep``: a key left alone. Returns the removed copies."""
    folder = Path(folder) if folder is not None else copy_dir()
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in sorted(folder.glob("*.bin")):
        if path.stem != keep and _remove_if_unused(path, folder / f"{path.stem}.lock", now - idle_s):
            removed.append(path)
    for tmp in folder.glob(".*.tmp"):
        key = tmp.name[1:].split(".", 1)[0]
        if key != keep:
            _remove_if_unused(tmp, folder / f"{key}.lock", now - idle_s, check_holders=False)
    return removed


def _remove_if_unused(path: Path, lock: Path, before: float, check_holders: bool = True) -> bool:
    """Remove ``path`` (and its lock file) if nobody holds its key's lock or, for a copy, the copy itself, and it
    was last used before ``before``."""
    try:
        with lock.open("a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer or an opener at work: leave it
            fd = os.open(path, os.O_RDONLY)
            try:
                if check_holders:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a trial maps it: leave it
                if os.fstat(fd).st_mtime > before:
                    return False
                path.unlink()
                lock.unlink(missing_ok=True)
                return True
            finally:
                os.close(fd)
    except OSError:  # BlockingIOError (in use) or gone meanwhile
        return False
