"""Before any work: can a results folder or an output file be written? And why a write failed, in one line.

:func:`check_writable` and :func:`check_output_file` probe a location before a study, a report or a
feature export starts (a path that is a file, lies under a file, is read-only or on a full disk used
to be found only when the first write came, as a wall of tracebacks); :func:`write_failure` turns the
OSError of a failed write into one :class:`ResultsWriteError` naming the file, the cause and the fix.
The one-line write errors themselves are in :mod:`study.store.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path

from study.errors import ResultsWriteError
from study.store.errors import blocking_file, write_failure
from study.store.location import Location, is_uri, open_results

#: free space below which :func:`check_writable` warns (a study writes parts, checkpoints and the journal)
LOW_SPACE_BYTES = 256 * 2**20
PROBE_PREFIX = ".write-probe-"


def _probe_folder(folder: Path, shown: str, flag: str) -> None:
    """Write + delete a small probe file in ``folder`` (fsync'd, so a full disk shows); leaves nothing behind.

    Folders that do not exist yet are created for the probe and removed again, so a run refused later
    (bad data, bad flags) leaves the file system as it was.
    """
    blocker = blocking_file(folder)
    if blocker is not None:
        what = "is a file" if blocker == folder else f"lies under {blocker}, which is a file"
        raise ResultsWriteError(f"{flag} {shown}: {what}, not a folder; move {blocker} away or give {flag} "
                                "another folder", str(blocker), errno.ENOTDIR)
    created = [p for p in [folder, *folder.parents] if not p.exists()]  # deepest first
    probe = folder / f"{PROBE_PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        err = write_failure(str(probe), exc, flag=flag)
        raise ResultsWriteError(str(err).replace(f"cannot write {probe}", f"{flag} {shown}: cannot write files in "
                                                 f"{folder}"), str(folder), err.errno) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()


def check_writable(results: str | Path | Location, subdirs: tuple[str, ...] = ("rows",),
                   flag: str = "--results") -> Location:
    """Fail before any work if the results location cannot be written; returns the resolved Location.

    Why: a results path that is a file, lies under a file, is read-only or on a full disk used to be
    found only when the first trial finished (minutes or hours later), as a wall of tracebacks. Here
    a probe file is created and removed in the folder and in each of ``subdirs`` (folders made for the
    probe are removed again); on an object store a probe object is written to and deleted from ``rows/``. Raises
    :class:`ResultsWriteError` naming the path and the fix; warns on stderr when little space is left.
    """

    loc = open_results(results)
    if loc.is_local:
        root = loc.local()
        for sub in ("", *subdirs):
            _probe_folder(root / sub if sub else root, loc.show(sub) if sub else loc.show(), flag)
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(root).free
            if free < LOW_SPACE_BYTES:
                print(f"warning: only {free / 2**20:.0f} MiB free on the disk of {loc.show()}; a study that "
                      "fills it stops with the trials stored so far kept", file=sys.stderr)
        return loc
    rel = f"{subdirs[0] if subdirs else ''}/{PROBE_PREFIX}{uuid.uuid4().hex[:8]}".lstrip("/")
    loc.write_bytes(rel, b"probe")  # ResultsWriteError names the location, the cause and the fix
    with contextlib.suppress(OSError):
        loc.delete_file(rel)
    return loc


def check_output_file(target: str | Path, flag: str, example: str = "out.html") -> None:
    """Fail before any work if the output file ``target`` could not be written later.

    Refuses a folder (``--out results/``), a path under a file, and a folder that is read-only or on a
    full disk (probe file). Object-store URIs are not probed here: their write errors are one line too.
    """

    if is_uri(target):
        return
    path = Path(target)
    if path.is_dir():
        raise ResultsWriteError(f"{flag} {path}: is a folder; give a file path (e.g. {path / example})",
                                str(path), errno.EISDIR)
    _probe_folder(path.parent, str(path.parent), flag)
