"""Why a write to the store failed, in one line: the OSError of a failed write -> one ResultsWriteError.

Every write (parts, checkpoints, reports, features) goes through :func:`write_failure`, so a full
disk, a read-only mount or a file in the way is named with the file, the cause and the fix instead
of a traceback. The lowest floor of :mod:`study.store`: it imports nothing of the store.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from study.errors import ResultsWriteError


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (pyarrow's and boto's run to pages)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def blocking_file(path: Path) -> Path | None:
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
        cause = first_line(exc)
        fix = f"check that these credentials may write there (and the bucket exists){elsewhere}"
    elif code in _NO_SPACE:
        cause = "no space left on the device (or the disk quota is used up)"
        fix = f"free space on that disk (df -h {Path(target).parent}){elsewhere}"
    elif code in _NO_PERMISSION:
        folder = Path(target).parent if not Path(target).is_dir() else Path(target)
        cause = "read-only file system" if code == errno.EROFS else "permission denied"
        fix = f"make {folder} writable (e.g. chmod u+w {folder}; remount a read-only disk read-write){elsewhere}"
    elif code in (errno.ENOTDIR, errno.EEXIST) and (blocker := blocking_file(Path(target).parent)):
        cause = f"{blocker} is a file, not a folder"
        fix = f"move that file away{elsewhere}"
    elif code == errno.EISDIR or Path(target).is_dir():
        cause = "it is a folder"
        fix = f"give a file path (e.g. {Path(target) / 'report.html'}){elsewhere}" if flag else \
            f"move that folder away{elsewhere}"
    else:
        cause = (exc.strerror or first_line(exc)) if isinstance(exc, OSError) else first_line(exc)
        fix = f"fix the location{elsewhere}"
    return ResultsWriteError(f"cannot write {target}: {cause}; {fix}", str(target), code)




#: how the disk-full cause reads in texts that lost the errno (a trial's error line, Ray's wrapped errors)
NO_SPACE_TEXT = ("No space left on device", "[Errno 28]", "Disk quota exceeded")
#: free bytes below which a folder's disk counts as full (Tune fails there with EOFError, truncated pickles)
FULL_BELOW = 256 * 2**10


def is_disk_full(exc: BaseException | str | None, folder: str | Path | None = None) -> bool:
    """Whether ``exc`` (an exception, its chain, or an error text) says the disk is full, or ``folder``'s disk
    has (almost) no free bytes left while an I/O error happened (Tune then fails with EOFError and the like)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, str):
            return any(t in exc for t in NO_SPACE_TEXT)
        if getattr(exc, "errno", None) in _NO_SPACE or any(t in str(exc) for t in NO_SPACE_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    if folder is None:
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW
    except OSError:
        return False


def disk_full_error(folder: str | Path) -> ResultsWriteError:
    """The one line for a study whose results disk filled up while it ran (Tune's checkpoints in ``tune/``)."""
    err = write_failure(str(Path(folder) / "."), OSError(errno.ENOSPC, "No space left on device"), flag=None)
    return ResultsWriteError(f"the disk holding {folder} is full: {str(err).split(': ', 1)[1]}. Every trial stored "
                             "before is kept; once there is space, re-run the same command to continue",
                             str(folder), errno.ENOSPC)
