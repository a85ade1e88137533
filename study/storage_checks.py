"""Before any work: can a results folder or an output file be written? And why a write failed, in one line.

:func:`check_writable` and :func:`check_output_file` probe a location before a study, a report or a
feature export starts (a path that is a file, lies under a file, is read-only or on a full disk used
to be found only when the first write came, as a wall of tracebacks); :func:`write_failure` turns the
OSError of a failed write into one :class:`ResultsWriteError` naming the file, the cause and the fix.
``study.storage`` uses it for every write and re-exports these names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from study.errors import ResultsWriteError

if TYPE_CHECKING:
    from study.storage import Location


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
#: free space below which :func:`check_writable` warns (a study writes parts, checkpoints and the journal)
LOW_SPACE_BYTES = 256 * 2**20
_PROBE = ".write-probe-"


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path``'s parent chain) that is a file, not a folder."""
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def write_failure(target: str, exc: OSError, *, local: bool = True, flag: str | None = "") -> ResultsWriteError:
    """An OSError of a write to ``target`` -> one :class:`ResultsWriteError` with the cause and the fix.

    ``flag`` (e.g. ``--results``) is named in the fix when the user can simply choose another place;
    None when they cannot (a study's own store: moving elsewhere would start the study again).
    """
    elsewhere = "" if flag is None else f" or give {flag} another location" if flag else " or write somewhere else"
    code = getattr(exc, "errno", None)
    if not local and code is None:  # object stores: pyarrow's message ("AWS Error ACCESS_DENIED ...")
        cause = _first_line(exc)
        fix = f"check that these credentials may write there (and the bucket exists){elsewhere}"
    elif code in _NO_SPACE:
        cause = "no space left on the device (or the disk quota is used up)"
        fix = f"free space on that disk (df -h {Path(target).parent}){elsewhere}"
    elif code in _NO_PERMISSION:
        folder = Path(target).parent if not Path(target).is_dir() else Path(target)
        cause = "read-only file system" if code == errno.EROFS else "permission denied"
        fix = f"make {folder} writable (e.g. chmod u+w {folder}; remount a read-only disk read-write){elsewhere}"
    elif code in (errno.ENOTDIR, errno.EEXIST) and (blocker := _blocking_file(Path(target).parent)):
        cause = f"{blocker} is a file, not a folder"
        fix = f"move that file away{elsewhere}"
    elif code == errno.EISDIR or Path(target).is_dir():
        cause = "it is a folder"
        fix = f"give a file path (e.g. {Path(target) / 'report.html'}){elsewhere}" if flag else \
            f"move that folder away{elsewhere}"
    else:
        cause = (exc.strerror or _first_line(exc)) if isinstance(exc, OSError) else _first_line(exc)
        fix = f"fix the location{elsewhere}"
    return ResultsWriteError(f"cannot write {target}: {cause}; {fix}", str(target), code)


def _probe_folder(folder: Path, shown: str, flag: str) -> None:
    """Write + delete a small probe file in ``folder`` (fsync'd, so a full disk shows); leaves nothing behind.

    Folders that do not exist yet are created for the probe and removed again, so a run refused later
    (bad data, bad flags) leaves the file system as it was.
    """
    blocker = _blocking_file(folder)
    if blocker is not None:
        what = "is a file" if blocker == folder else f"lies under {blocker}, which is a file"
        raise ResultsWriteError(f"{flag} {shown}: {what}, not a folder; move {blocker} away or give {flag} "
                                "another folder", str(blocker), errno.ENOTDIR)
    created = [p for p in [folder, *folder.parents] if not p.exists()]  # deepest first
    probe = folder / f"{_PROBE}{uuid.uuid4().hex[:8]}"
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
    from study.storage import open_results  # at call time: study.storage imports this module

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
    rel = f"{subdirs[0] if subdirs else ''}/{_PROBE}{uuid.uuid4().hex[:8]}".lstrip("/")
    loc.write_bytes(rel, b"probe")  # ResultsWriteError names the location, the cause and the fix
    with contextlib.suppress(OSError):
        loc.delete_file(rel)
    return loc


def check_output_file(target: str | Path, flag: str, example: str = "out.html") -> None:
    """Fail before any work if the output file ``target`` could not be written later.

    Refuses a folder (``--out results/``), a path under a file, and a folder that is read-only or on a
    full disk (probe file). Object-store URIs are not probed here: their write errors are one line too.
    """
    from study.storage import is_uri  # at call time: study.storage imports this module

    if is_uri(target):
        return
    path = Path(target)
    if path.is_dir():
        raise ResultsWriteError(f"{flag} {path}: is a folder; give a file path (e.g. {path / example})",
                                str(path), errno.EISDIR)
    _probe_folder(path.parent, str(path.parent), flag)
