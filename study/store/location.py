"""Where a study's results live: a local folder or an object-store URI, through pyarrow filesystems.

``--results`` may be a local path (``results/demo``, ``/mnt/efs/study1``, ``file:///shared/study1``) or
an object-store URI (``s3://bucket/studies/hyko2``, ``gs://bucket/...``, with pyarrow's query options
such as ``?endpoint_override=host:9000&scheme=http`` for MinIO or other S3-compatible servers). It is
resolved once, with :func:`pyarrow.fs.FileSystem.from_uri`, into a :class:`Location`: a filesystem plus
a root path. Everything results-facing — the Parquet store, ``study.json``, manifests, the report, Tune's
experiment folders — goes through a Location, so no other module asks "is this a URI?".

What differs between the two kinds, and why:

- **Atomic writes.** A local file is written to a temp file in the same folder and renamed, so a crash
  leaves the old file or the new one, never half of one. Object stores have no rename, but they do not
  need one: an object becomes visible only when its upload completes (a single PUT, or the final
  ``CompleteMultipartUpload``), so a reader sees the whole object or none. Writers here hand the whole
  payload over in one call, from memory, so an interrupted upload leaves no object at all.
- **Files that need a local path** (Optuna's journal file): :class:`WorkingCopy` downloads the object
  into a local temp folder, and uploads it again on :meth:`WorkingCopy.push`.
- **The one-writer lock.** ``fcntl`` locks do not exist on object stores; :func:`lease` writes a lease
  object instead (see its docstring for what it can and cannot promise).

The lease lives in :mod:`study.store.lease`, the checks before any work (:func:`check_writable`,
:func:`check_output_file`) in :mod:`study.store.checks`, the one-line write errors
(:func:`write_failure`) in :mod:`study.store.errors`; callers import them from :mod:`study.store`.

Credentials come from the usual places of each store (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``
or the VM's service account), never from the URI.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from study.errors import ConfigError, ResultsWriteError
from study.store.errors import first_line, write_failure

#: What ``--results`` accepts, for error messages.
ACCEPTED = "a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix"
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
_BUCKET_STORES = ("s3", "gcs")  # pyarrow type names of the stores whose first path component is a bucket


def is_uri(results: str | Path) -> bool:
    """True for ``scheme://...`` text (a pathlib.Path can never be one: it collapses the ``//``)."""
    return isinstance(results, str) and _URI.match(results) is not None


def results_arg(text: str) -> Path | str:
    """argparse type of ``--results``: a Path for local folders (unchanged behaviour), the text for URIs."""
    return text if is_uri(text) else Path(text)


def check_results_text(results: str | Path) -> None:
    """Syntax checks that need no network (ConfigError naming the rule), run in StudyConfig.validate."""
    text = str(results)
    if re.match(r"^(s3|gs|gcs|hdfs|viewfs|abfss?|file):/[^/]", text, re.I):  # Path("s3://b/x") is "s3:/b/x"
        raise ConfigError(f"results location {text!r} looks like a URI that lost a slash; write it as "
                          f"scheme://bucket/prefix (and pass it as a str, not a pathlib.Path)")
    m = _URI.match(text) if isinstance(results, str) else None
    if m is None:
        return
    bucket = m["rest"].split("?", 1)[0].split("/", 1)[0]
    if m["scheme"].lower() in ("s3", "gs", "gcs") and not bucket:
        raise ConfigError(f"results location {text}: the bucket name is missing; expected {m['scheme']}://BUCKET/prefix")


@dataclass(frozen=True, eq=False)
class Location:
    """A results folder: ``fs`` + ``root`` (a path on ``fs``), and the text the user gave (for messages)."""

    text: str
    fs: pafs.FileSystem
    root: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The path of ``parts`` below the root, on ``fs`` (what Ray's ``storage_path`` wants with ``fs``)."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)]) if parts else self.root

    def child(self, *parts: str) -> Location:
        """The Location of a sub-folder (same filesystem), e.g. ``loc.child("tune")`` for Ray's storage_path."""
        base, _, query = self.text.partition("?")
        text = "/".join([base.rstrip("/"), *parts]) + (f"?{query}" if query else "")
        return Location(text, self.fs, self.path(*parts))

    def local(self, *parts: str) -> Path:
        """The same as :meth:`path`, as a local Path; only for local locations."""
        if not self.is_local:
            raise ValueError(f"{self.text} is not a local folder")
        return Path(self.path(*parts))

    def show(self, *parts: str) -> str:
        """Human-readable name of ``parts`` below the root: the local path, or scheme://bucket/... (no query)."""
        if self.is_local:
            return str(Path(self.text.removeprefix("file://") if is_uri(self.text) else self.text, *parts))
        return self.name_of(self.path(*parts))

    def name_of(self, fs_path: str) -> str:
        """Human-readable name of a path on ``fs`` (e.g. one that :meth:`list_files` returned)."""
        return fs_path if self.is_local else f"{self.text.split('://', 1)[0]}://{fs_path}"

    def info(self, *parts: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.info(*parts).type != pafs.FileType.NotFound

    def is_dir(self, *parts: str) -> bool:
        return self.info(*parts).type == pafs.FileType.Directory

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``data`` to ``rel`` so that no reader ever sees half of it (see the module docstring).

        A failed write (read-only folder, full disk, a file in the way, no write permission on the
        bucket) raises :class:`ResultsWriteError` naming the file, the cause and the fix.
        """
        try:
            if self.is_local:
                return str(atomic_write_bytes(self.local(rel), data))
            target = self.path(rel)
            with self.fs.open_output_stream(target) as fh:  # the object appears only when the upload completes
                fh.write(data)
            return target
        except ResultsWriteError:
            raise
        except OSError as exc:
            raise write_failure(self.show(rel), exc, local=self.is_local, flag=None) from exc

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Paths (on ``fs``) of the files directly in ``rel`` whose names end in ``suffix``; dot-files skipped."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.path for i in infos if i.is_file and not i.base_name.startswith(".")
                      and i.base_name.endswith(suffix))

    def delete_file(self, *parts: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(*parts))

    def move_file(self, fs_path: str, rel: str) -> str:
        """Move the file at ``fs_path`` (a path on ``fs``) to ``rel`` below the root; returns the new path.

        A rename on a local folder; copy + delete on an object store (which has no rename), so an
        interrupted move leaves both copies, never none.
        """
        target = self.path(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(fs_path, target)
        else:
            self.fs.copy_file(fs_path, target)
            self.fs.delete_file(fs_path)
        return target

    def delete_dir(self, *parts: str) -> None:
        """Remove a folder (a prefix, on object stores) and everything under it; missing is fine."""
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere it is read the only portable way, set-and-restore, under a lock; a thread creating a
    file in that instant outside this module could see umask 0o022 (the value set in between).
    """
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a newly written file: what ``open()`` would give (0o666 less the umask).

    ``mkstemp`` creates its temp file 0o600 whatever the umask, so without this a renamed result
    file would be unreadable to the group that shares a results folder.
    """
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename (never half-written).

    The file gets the permissions of a normal ``open()`` (:func:`file_mode`), not mkstemp's 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))




def resolve(results: str | Path | Location) -> Location:
    """``--results`` -> a Location. Local paths need no I/O; URIs are resolved once per process (cached).

    Raises ConfigError (one line) for an unknown scheme, a missing bucket name or a store pyarrow cannot
    open; whether the bucket exists and the credentials work is checked by :func:`probe`.
    """
    if isinstance(results, Location):
        return results
    check_results_text(results)
    if not is_uri(results):
        return Location(str(results), pafs.LocalFileSystem(), os.path.abspath(results))
    return _resolve_uri(str(results))


@functools.lru_cache(maxsize=16)
def _resolve_uri(text: str) -> Location:
    try:  # for s3 this may ask the endpoint for the bucket's region: errors here are network errors too
        fs, root = pafs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ConfigError(f"results location {text}: {first_line(exc)} (expected {ACCEPTED})") from None
    if isinstance(fs, pafs.LocalFileSystem):
        root = os.path.abspath(root)
    return Location(text, fs, root.rstrip("/") or root)


def probe(loc: Location) -> None:
    """Fail fast, before any training, if the store cannot be reached, the bucket is missing or access fails."""
    if loc.is_local:
        return
    bucket = loc.root.split("/", 1)[0]
    try:
        if loc.fs.type_name in _BUCKET_STORES and loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ConfigError(f"results location {loc.show()}: bucket {bucket!r} does not exist (or these "
                              "credentials cannot see it); create it first or fix the name")
        loc.info()
    except OSError as exc:
        raise ConfigError(f"results location {loc.show()}: cannot access the object store ({first_line(exc)}); "
                          "check the credentials (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                          "GOOGLE_APPLICATION_CREDENTIALS) and the endpoint") from None


def open_results(results: str | Path | Location) -> Location:
    """:func:`resolve` + :func:`probe`: what an entry point calls before it writes anything."""
    loc = resolve(results)
    probe(loc)
    return loc


def join(results: str | Path, name: str) -> str | Path:
    """``results / name`` for a local Path or a URI (keeping its ``?query`` options at the end); no I/O."""
    if not is_uri(results):
        return Path(results) / name
    base, _, query = str(results).partition("?")
    return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")


def write_to(target: str | Path, data: bytes) -> str:
    """Write one output file (a report, a CSV) to a local path or an object URI; returns its display name.

    A failed write raises :class:`ResultsWriteError` (file, cause, fix) instead of an OSError traceback.
    """
    if not is_uri(target):
        try:
            return str(atomic_write_bytes(Path(target), data))
        except OSError as exc:
            raise write_failure(str(target), exc) from exc
    text = str(target)
    base, _, query = text.partition("?")
    parent, _, name = base.rstrip("/").rpartition("/")
    loc = open_results(parent + (f"?{query}" if query else ""))
    loc.write_bytes(name, data)
    return loc.show(name)


class WorkingCopy:
    """A local working copy of one file under a Location, for libraries that need a real file path.

    Optuna's ``JournalFileBackend`` appends to a local file with file locks; an object store has
    neither appends nor locks. So for a remote Location the journal is downloaded into a private temp
    folder on :meth:`pull`, used locally, and uploaded whole on every :meth:`push` (the driver pushes
    after every finished trial and at the end of a cell). The remote copy is at most one push behind;
    what it misses is re-created on resume anyway, because finished trials are replayed from the
    Parquet store, which is the record of the study. For a local Location the file itself is used.
    """

    def __init__(self, loc: Location, rel: str) -> None:
        self.loc, self.rel = loc, rel
        # a plain folder name, not a TemporaryDirectory: Tune pickles callbacks that hold this object
        self._tmp: str | None = None
        if loc.is_local:
            self.path = loc.local(rel)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.mkdtemp(prefix="hsistudy-")
            self.path = Path(self._tmp) / Path(rel).name

    def pull(self) -> WorkingCopy:
        if self._tmp is not None and self.loc.exists(self.rel):
            self.path.write_bytes(self.loc.read_bytes(self.rel))
        return self

    def push(self) -> None:
        if self._tmp is not None and self.path.exists():
            self.loc.write_bytes(self.rel, self.path.read_bytes())

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> WorkingCopy:
        return self.pull()

    def __exit__(self, *exc: object) -> None:
        try:
            self.push()
        finally:
            self.close()
