"""The arms' backbones (pretrained here, randomly initialised, or a given checkpoint) and their features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.indian_pines.data import scene


def pretrained_backbone(args: argparse.Namespace, seed: int, holdout: str) -> tuple[Path, dict[str, Any]]:
    """The cached pretrained checkpoint for ``seed`` (pretraining it first if needed) and its card."""
    from study.pretrain import default_config, ensure_default_backbone

    over: dict[str, Any] = {"seed": seed, "ip_holdout": holdout}
    if args.steps is not None:
        over["steps"] = args.steps
    for key, value in args.pretrain_set:
        over[key] = value
    config = default_config(args.size, **over)
    path = ensure_default_backbone(args.cache_dir, config=config, progress=not args.quiet)
    card = json.loads(path.with_name(path.stem + ".card.json").read_text())
    return path, card


def random_backbone(size: Any, seed: int) -> torch.nn.Module:
    """The architecture (a size name or a ``HyperSLConfig``) with the initial weights a pretraining of ``seed``
    starts from."""
    from study.models.hypersl import build_hypersl

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_hypersl(size)


def given_backbone(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A checkpoint given with ``--backbone``, loaded strictly, and what the JSON records about it."""
    from study.errors import HsiStudyError
    from study.models.checkpoints import checkpoint_hash, load_hypersl

    try:
        model = load_hypersl(path)
        info: dict[str, Any] = {"path": str(path), "checkpoint_hash": checkpoint_hash(path),
                                "architecture": model.config.as_dict()}
    except (HsiStudyError, OSError) as exc:
        raise SystemExit(f"error: --backbone: {exc}") from None
    card = path.with_name(path.stem + ".card.json")
    if card.is_file():  # one of ours: keep what it says about data and steps
        info["card"] = json.loads(card.read_text())
    return model, info


def features(model: torch.nn.Module, layout: str, bn_mode: str, chunk: int) -> np.ndarray:
    """(145 * 145, D) float32 features of the scaled scene at ``layout``."""
    from study.features import export_image

    image, wl = scene(layout)
    return export_image(model, image, wl, bn_mode=bn_mode, chunk_size=chunk, dtype="float32").reshape(
        -1, model.dim)
