"""The feature cache: one HDF5 file per (backbone, data, split, settings), made once and reused.

:func:`ensure_features` is what the driver calls once per study: it finds a current cache file or
makes it, locally in one pass (:func:`study.features.export.export_split`) or sharded over a Ray
cluster (:mod:`study.features.shards`), under a file lock so concurrent studies export once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import torch
from torch import nn

from study.data.specs import get_spec
from study.features.export import (
    DEFAULT_AUTOCAST,
    FEATURE_VERSION,
    check_settings,
    default_chunk,
    export_split,
    source_stat,
)
from study.features.shards import export_split_sharded
from study.filelock import file_lock
from study.models.checkpoints import checkpoint_hash, load_hypersl
from study.train.devices import release_device_memory


def source_id(data_root: str | Path) -> str:
    """10 hex digits naming a data folder (resolved path): synthetic and real data never share features."""
    return hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:10]


def feature_cache_path(cache_dir: str | Path, ckpt_hash: str, dataset: str, split: str, bn_mode: str, chunk: int,
                       dtype: str, source: str = "", autocast: str = "off") -> Path:
    """``<cache>/features/<ckpt>/<dataset>[-<source>]-<bn>-c<chunk>-<dtype>[-bf16]/<dataset>_<split>.h5``.

    The folder is itself an HS3-Bench data root (one file per split). fp32-computed
    features keep the key they always had; bf16 autocast adds ``-bf16`` (other features).
    """
    check_settings(bn_mode, chunk, dtype, autocast)
    tag = f"{dataset}-{source}" if source else dataset
    suffix = "" if autocast == "off" else f"-{autocast}"
    return Path(cache_dir) / "features" / ckpt_hash / f"{tag}-{bn_mode}-c{chunk}-{dtype}{suffix}" / \
        f"{dataset}_{split}.h5"


def is_current(path: Path, source_file: Path) -> bool:
    """A finished cache file made from the current version of its source file."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            attrs = dict(fh.attrs)
    except OSError:
        return False
    return bool(attrs.get("complete")) and attrs.get("feature_version") == FEATURE_VERSION and \
        source_file.is_file() and attrs.get("source_stat") == source_stat(source_file)


def ensure_features(cache_dir: str | Path, backbone: str | Path, data_root: str | Path, dataset: str,
                    splits: tuple[str, ...] | list[str] | None = None, *, bn_mode: str = "chunk",
                    chunk_size: int | None = None, dtype: str = "float16", device: str | torch.device = "cpu",
                    autocast: str = DEFAULT_AUTOCAST, shards: int | None = None, cluster: bool = False,
                    progress: bool = True) -> Path:
    """Folder holding ``<dataset>_<split>.h5`` feature files, computing each missing split once.

    Reused when the file exists, is complete and its source file is unchanged
    (size + mtime); otherwise (re)computed under a per-file lock. ``shards`` > 1 or
    ``cluster`` export a split as contiguous image shards (:mod:`study.features.shards`):
    with ``cluster`` one Ray task each (on a GPU where the cluster has them; data root
    and cache must then be on storage every node sees), else one after another here;
    finished shards survive an interruption and are not recomputed.
    """

    spec = get_spec(dataset)
    chunk = default_chunk(dataset) if chunk_size is None else chunk_size
    check_settings(bn_mode, chunk, dtype, autocast)
    ckpt = checkpoint_hash(backbone)
    model: nn.Module | None = None
    folder = None
    for split in splits or spec.splits:
        path = feature_cache_path(cache_dir, ckpt, dataset, split, bn_mode, chunk, dtype, source_id(data_root),
                                  autocast)
        folder = path.parent
        source_file = Path(data_root) / spec.file_name(split)
        if is_current(path, source_file):
            continue
        with file_lock(path.with_name(f".{path.name}.lock")):
            if is_current(path, source_file):
                continue
            settings = dict(ckpt_hash=ckpt, bn_mode=bn_mode, chunk_size=chunk, dtype=dtype, autocast=autocast,
                            progress=progress)
            if cluster or (shards is not None and shards > 1):
                export_split_sharded(backbone, data_root, dataset, split, path, shards=shards, cluster=cluster,
                                     device=device, **settings)
                continue
            if model is None:
                model = load_hypersl(backbone).to(device)
            export_split(model, data_root, dataset, split, path, device=device, **settings)
    if model is not None:  # a local export runs in the driver: GPU 0's cache would stay reserved while Ray
        del model           # hands GPU 0 to trials, so the model goes and the cached memory is given back
        release_device_memory(device)
    assert folder is not None
    return folder
