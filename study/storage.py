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

Credentials come from the usual places of each store (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role; for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``
or the VM's service account), never from the URI.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from study.errors import ConfigError, HsiStudyError

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


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


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
        """Write ``data`` to ``rel`` so that no reader ever sees half of it (see the module docstring)."""
        if self.is_local:
            return str(atomic_write_bytes(self.local(rel), data))
        target = self.path(rel)
        with self.fs.open_output_stream(target) as fh:  # the object appears only when the upload completes
            fh.write(data)
        return target

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

    def delete_dir(self, *parts: str) -> None:
        """Remove a folder (a prefix, on object stores) and everything under it; missing is fine."""
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
        raise ConfigError(f"results location {text}: {_first_line(exc)} (expected {ACCEPTED})") from None
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
        raise ConfigError(f"results location {loc.show()}: cannot access the object store ({_first_line(exc)}); "
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
    """Write one output file (a report, a CSV) to a local path or an object URI; returns its display name."""
    if not is_uri(target):
        return str(atomic_write_bytes(Path(target), data))
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


def _read_lease(loc: Location) -> dict | None:
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
    held = _read_lease(loc)
    if held is not None and time.time() - float(held.get("renewed", 0)) < ttl_s and _owner_alive(held):
        age = time.time() - float(held.get("renewed", 0))
        raise HsiStudyError(
            f"{loc.show()} is in use by another study.run ({held.get('owner', 'unknown')}, lease renewed "
            f"{age:.0f} s ago); wait for it to finish or use another --results. If that run is dead, delete "
            f"{loc.show(LEASE)} (a lease not renewed for {ttl_s:.0f} s expires by itself)")
    token = uuid.uuid4().hex
    me = {"owner": f"pid {os.getpid()} on {socket.gethostname()}", "host": socket.gethostname(),
          "pid": os.getpid(), "token": token, "created": time.time()}

    def write() -> None:
        loc.write_text(LEASE, json.dumps({**me, "renewed": time.time()}))

    write()
    time.sleep(LEASE_SETTLE_S)
    if (_read_lease(loc) or {}).get("token") != token:
        raise HsiStudyError(f"{loc.show()} was claimed by another study.run at the same moment; "
                            "use another --results or retry when it has finished")
    stop = threading.Event()
    # renewal and release never overlap: a slow renewal PUT that finished after the release's delete
    # would leave a fresh-looking lease of a finished run behind for ttl_s
    guard = threading.Lock()

    lost: dict[str, str] = {}  # set once another run's lease replaced ours (we stalled past ttl_s)

    def renew() -> None:
        while not stop.wait(renew_s):
            with guard, contextlib.suppress(OSError):  # a missed renewal is retried; ttl_s covers several
                if stop.is_set():
                    return
                current = _read_lease(loc) or {}
                if current.get("token") == token:
                    write()
                elif not lost:
                    lost["owner"] = str(current.get("owner", "no one (the lease was deleted)"))
                    print(f"warning: {loc.show(LEASE)} is now held by {lost['owner']}: this run lost its "
                          "one-writer lease and will stop with an error when it ends", file=sys.stderr)

    thread = threading.Thread(target=renew, name="hsistudy-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        with guard, contextlib.suppress(OSError):
            if (_read_lease(loc) or {}).get("token") == token:
                loc.delete_file(LEASE)
        thread.join(timeout=5)
    if lost:  # reached only when the study itself ended normally: say so rather than exit 0
        raise HsiStudyError(
            f"{loc.show()}: this run lost its lease to {lost['owner']} while it ran (it stalled for longer than "
            f"{ttl_s:.0f} s, or the lease was deleted), so two runs may have written there; the rows are "
            "whole files either way: re-run the same command once the other run has finished to check "
            "that every cell is complete")
