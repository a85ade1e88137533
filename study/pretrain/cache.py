"""The default backbone: pretrained once per settings hash, cached, and reused by a study and its Ray workers.

Why a cache: the driver, the feature exporter and every worker ask for "the
default backbone"; the first asker pretrains it under a file lock, the rest wait
for and reuse the checkpoint, keyed by :func:`~study.pretrain.config.settings_hash`.

Why a packaged copy: the default (``cpu``) backbone's checkpoint ships in
``study/pretrain/packaged/`` with its card, made by
``python scripts/make_default_backbone.py`` (the same pretraining, one thread).
A first study copies it into the cache after checking its sha256 against the
card, instead of pretraining for minutes; a recipe change changes the settings
hash, so a stale packaged file is never used (and ``tests/test_pretrain.py``
fails until it is re-made).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from study.filelock import file_lock
from study.pretrain.config import PretrainConfig, default_config, settings_hash
from study.pretrain.loop import pretrain, resume_path
from study.store import atomic_write_bytes


def backbone_path(cache_dir: str | Path | None, config: PretrainConfig) -> Path:
    """Where :func:`ensure_default_backbone` keeps the checkpoint for ``config``."""
    from study.data.synthetic.generator import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "backbones" / f"hypersl-{config.size}-{settings_hash(config)}.pt"


PACKAGED = Path(__file__).resolve().parent / "packaged"


def packaged_checkpoint(name: str) -> Path | None:
    """The packaged checkpoint of that cache name whose bytes match its card's sha256, else None."""
    src, card = PACKAGED / name, PACKAGED / (Path(name).stem + ".card.json")
    if not (src.is_file() and card.is_file()):
        return None
    try:
        expected = json.loads(card.read_text())["sha256"]
    except (ValueError, KeyError):
        return None
    return src if hashlib.sha256(src.read_bytes()).hexdigest() == expected else None


def _copy_packaged(path: Path, progress: bool) -> bool:
    """Copy the packaged checkpoint (and its cards) for ``path``'s settings into the cache; False if none."""
    src = packaged_checkpoint(path.name)
    if src is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    for f in sorted(PACKAGED.glob(Path(path.name).stem + ".*")):
        atomic_write_bytes(path.parent / f.name, f.read_bytes())
    if progress:
        print(f"[hsistudy] default HyperSL backbone: the packaged checkpoint {src.name} (sha256 checked) -> {path}",
              file=sys.stderr, flush=True)
    return True


def ensure_default_backbone(cache_dir: str | Path | None = None, size: str = "cpu",
                            config: PretrainConfig | None = None, progress: bool = True, force: bool = False,
                            device: str = "cpu", save_every: int | None = None,
                            time_limit: float | None = None, threads: int | None = 1) -> Path:
    """The cached pretrained checkpoint for these settings, pretraining it on first use (continuing an
    interrupted first use from its last resume point; ``force``: from scratch).

    ``threads`` (default 1; None: torch's current setting) pins torch's CPU threads
    while pretraining: float reductions depend on the thread count, so without it
    the cached default backbone, and every crossdomain number made with it, would
    differ between a laptop and a CI runner with the same settings hash.
    """
    config = (config or default_config(size)).validate()
    path = backbone_path(cache_dir, config)
    card = path.with_name(path.stem + ".card.json")
    if not force and path.is_file() and card.is_file():
        return path
    with file_lock(path.with_name(f".{path.name}.lock")):
        if force:
            resume_path(path).unlink(missing_ok=True)
        elif not (path.is_file() and card.is_file()) and _copy_packaged(path, progress):
            return path
        if force or not (path.is_file() and card.is_file()):
            if progress:
                print(f"[hsistudy] pretraining the HyperSL {config.size} backbone ({config.steps} steps) -> {path}",
                      file=sys.stderr, flush=True)
            before = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            try:
                pretrain(config, path, progress=progress, device=device, save_every=save_every,
                         time_limit=time_limit)
            finally:
                torch.set_num_threads(before)
    return path
