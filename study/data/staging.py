"""Per-node staging: copy a study's input files once per node to fast local disk (``--stage-data DIR``).

Why: a trial reads its HDF5 files batch by batch, every epoch. Over NFS/EFS
each read is a network round trip with the server's throughput shared by every
trial of the cluster; an HCV2 image is 343 MB of float32. A local NVMe copy is
read at GB/s by any number of trials on that node. The copy is made **once per
node**, by the first trial that needs it; the other trials on that node wait on
a file lock per target and then reuse it.

Correctness: the driver hashes every file once (:func:`hash_files`) and passes
size + hash with the paths; the node copies into a temporary file in the stage
folder while hashing what it copies, compares size and hash, then renames (a
reader never sees half a file). A small marker beside the copy records
(size, hash, mtime) so later trials check the copy in microseconds instead of
re-reading hundreds of GB; ``rehash=True`` re-reads it anyway.

Layout: ``<stage_dir>/<source folder name>-<10 hex of its path>/<file name>``: the
files of one source folder stay together, so a staged data root is still a
data root (``<dataset>_<split>.h5``, ``wave_<dataset>.csv``) and a raw split never
collides with the feature file of the same name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from study.errors import HsiStudyError
from study.filelock import file_lock
from study.hashing import file_digest

BLOCK = 8 * 2**20
#: free space left on the stage disk after a copy (other trials write checkpoints there too)
FREE_MARGIN = 1 * 2**30


class StagingError(HsiStudyError):
    """A file could not be staged (source changed since the driver hashed it, disk full, ...)."""


def file_hash(path: str | Path) -> str:
    """sha256 hex digest of a file (the project's one cached file digest: read once per file version)."""
    return file_digest(path, 64)


def hash_files(paths: dict[str, str]) -> dict[str, str]:
    """What the driver computes once per study and passes to :func:`stage` with the paths."""
    return {key: file_hash(p) for key, p in paths.items()}


def staged_path(src: str | Path, stage_dir: str | Path) -> Path:
    """Where ``src`` is staged under ``stage_dir`` (deterministic: every trial computes the same)."""
    src = Path(src).absolute()
    folder = hashlib.sha256(str(src.parent).encode()).hexdigest()[:10]
    return Path(stage_dir) / f"{src.parent.name or 'root'}-{folder}" / src.name


def _marker(target: Path) -> Path:
    return target.with_name(f".{target.name}.staged")


def _is_staged(target: Path, size: int, digest: str, rehash: bool) -> bool:
    """The staged copy exists with the expected size and hash (from its marker, or re-read with ``rehash``)."""
    try:
        st = target.stat()
        size_m, digest_m, mtime_m = _marker(target).read_text().split()
    except (OSError, ValueError):
        return False
    if st.st_size != size or int(size_m) != size or digest_m != digest or int(mtime_m) != st.st_mtime_ns:
        return False
    return not rehash or file_hash(target) == digest


def _copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` (fsynced), returning the size and sha256 of the bytes written."""
    h, n = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(BLOCK):
            h.update(block)
            fout.write(block)
            n += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    return n, h.hexdigest()


def stage_file(src: str | Path, digest: str, stage_dir: str | Path, *, rehash: bool = False) -> Path:
    """Stage one file (see :func:`stage`); returns its local path."""
    src = Path(src)
    target = staged_path(src, stage_dir)
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise StagingError(f"cannot stage {src}: {exc.strerror or exc} (is it on storage this node mounts?)") \
            from None
    if _is_staged(target, size, digest, rehash):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(f".{target.name}.lock")):
        if _is_staged(target, size, digest, rehash):  # another trial on this node staged it meanwhile
            return target
        free = shutil.disk_usage(target.parent).free + (target.stat().st_size if target.exists() else 0)
        if free < size + FREE_MARGIN:
            raise StagingError(f"cannot stage {src} ({size / 2**30:.1f} GiB) into {target.parent}: only "
                               f"{free / 2**30:.1f} GiB free; use a bigger --stage-data disk or clean it")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            n, got = _copy_hashed(src, tmp)
            if n != size or got != digest:
                raise StagingError(f"{src} changed since the driver hashed it (size {n} vs {size}, sha256 "
                                   f"{got[:12]} vs {digest[:12]}); do not rewrite input files during a study")
            _marker(target).unlink(missing_ok=True)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _marker(target).write_text(f"{size} {digest} {target.stat().st_mtime_ns}\n")
    return target


def stage(paths: dict[str, str], hashes: dict[str, str], stage_dir: str, *,
          rehash: bool = False) -> dict[str, str]:
    """Local copies of ``paths`` (by key) under ``stage_dir``, each made once per node and checked.

    ``hashes`` holds the driver's sha256 of every path (:func:`hash_files`), by the
    same keys. Safe to call from every trial: concurrent calls on one node copy a
    file once (a lock per target); a copy that is already there and matches
    (size, hash) is reused. Returns key -> local path.
    """
    missing = sorted(set(paths) - set(hashes))
    if missing:
        raise StagingError(f"no hash for {', '.join(missing)}: the driver hashes every staged file (hash_files)")
    return {key: str(stage_file(src, hashes[key], stage_dir, rehash=rehash)) for key, src in paths.items()}


def _split_files(data: object) -> list[str]:
    """The HDF5 files a bundle's splits read (raw and feature splits; in-memory splits have none)."""
    out: list[str] = []
    while data is not None:
        out += [ref.path for ref in (data.train, data.val, data.test) if isinstance(getattr(ref, "path", None), str)]
        data = getattr(data, "raw", None)
    return out


def stage_trial_inputs(data: object, config: dict) -> tuple[object, dict]:
    """A trial's bundle and config with every input file replaced by its staged local copy.

    Called at the start of every trial whose config has ``stage_dir`` (``--stage-data``); the first trial
    on a node copies, later ones find the checked copies. ``config["stage_hashes"]`` maps each source path
    to the sha256 the driver computed once per study.
    """
    from dataclasses import replace

    hashes: dict[str, str] = dict(config["stage_hashes"])
    wanted = [p for p in _split_files(data) if p in hashes]
    backbone = config.get("backbone_path")
    if backbone and backbone in hashes:
        wanted.append(backbone)
    local = stage({p: p for p in wanted}, {p: hashes[p] for p in wanted}, str(config["stage_dir"]))

    def swap(bundle: object) -> object:
        if bundle is None:
            return None
        splits = {name: (replace(ref, path=local[ref.path]) if getattr(ref, "path", None) in local else ref)
                  for name, ref in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))}
        return replace(bundle, **splits, raw=swap(getattr(bundle, "raw", None)))

    config = {**config, "backbone_path": local.get(backbone, backbone)} if backbone else dict(config)
    return swap(data), config
