"""What the trainable tests share: a stand-in for ``ray.tune.report``, the tiny HyKo2 bundle and its features.

Trainables are plain functions (``config, data, report, get_checkpoint``), so their
contract is tested without Ray: :class:`Recorder` keeps every reported metrics dict
and copies each epoch's checkpoint folder, which a second call can resume from.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from study.data.bundle import DataBundle, Split, SplitArrays, make_bundle, materialize
from study.data.datasets import validate_dataset
from study.data.specs import get_spec
from study.data.subsets import make_subset

CHUNK = 100  # export chunk in pixels: a 16x24 image -> 4 chunks, the last one partial


class Recorder:
    """A stand-in for ray.tune.report that keeps metrics and copies checkpoints (into ``keep``/epoch<N>)."""

    def __init__(self, keep: Path | None = None) -> None:
        self.metrics: list[dict] = []
        self.keep = keep

    def __call__(self, metrics: dict, checkpoint: Any = None) -> None:
        self.metrics.append(dict(metrics))
        if checkpoint is not None and self.keep is not None:
            shutil.copytree(checkpoint.path, self.keep / f"epoch{metrics['epoch']}")


def run(trainable: Callable[..., Any], config: dict, data: DataBundle, keep: Path | None = None,
        ckpt: Any = None) -> Recorder:
    """Call ``trainable`` once as Tune would (optionally resuming from ``ckpt``); return what it reported."""
    rec = Recorder(keep)
    trainable(dict(config), data, report=rec, get_checkpoint=lambda: ckpt)
    return rec


def tiny_hyko2_bundle(root: Path, fraction: float = 1.0) -> DataBundle:
    """The conftest ``tiny_root`` HyKo2 data as a trainable sees it (raw cubes, one training subset)."""
    spec = get_spec("hyko2")
    splits = validate_dataset(root, spec)
    subset = make_subset("hyko2", splits["train"].names, splits["train"].classes_present(), fraction, 0)
    return make_bundle(spec, splits, subset, "synthetic:test")


def feature_bundle(raw: DataBundle, ckpt: Path, bn_mode: str = "chunk", dtype: str = "float16") -> DataBundle:
    """What the driver builds: the cached k = 0 export (float16) of ``raw`` as images, plus ``raw`` for k > 0."""
    from study.features import export_image
    from study.models.checkpoints import checkpoint_hash, load_hypersl

    model = load_hypersl(ckpt)

    def export(split: Split) -> SplitArrays:
        s = materialize(split)
        feats = [export_image(model, im, raw.wavelengths, bn_mode=bn_mode, chunk_size=CHUNK, dtype=dtype)
                 for im in s.images]
        return replace(s, images=np.stack(feats))

    return replace(raw, train=export(raw.train), val=export(raw.val), test=export(raw.test),
                   backbone_hash=checkpoint_hash(ckpt), raw=raw)


def backbone_config(ckpt: Path, bn_mode: str = "chunk") -> dict[str, Any]:
    """The constants the driver puts into every trial config of a HyperSL strategy (path + hash, never arrays)."""
    from study.models.checkpoints import checkpoint_hash

    return {"backbone_path": str(ckpt), "backbone_hash": checkpoint_hash(ckpt), "bn_mode": bn_mode,
            "chunk_size": CHUNK}
