"""The ``python -m study.features`` command line: export a data set's per-pixel HyperSL features.

A module of its own so that :mod:`study.features` (what trials and the driver
import) stays the export and the cache; :func:`study.features.export.main` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from study.errors import HsiStudyError
from study.features.export import AUTOCAST_MODES, DEFAULT_AUTOCAST, DTYPES, export_split
from study.models.hypersl import BN_MODES
from study.progress import StopSignals, kill_children

EXAMPLES = """\
examples:
  python -m study.features --backbone default --dataset hyko2 --out /tmp/feats
      features of the embedded synthetic HyKo2-like data with the cached sanity-pretrained `cpu` backbone
  python -m study.features --backbone 5_base_mask95_checkpoint.pt --data /data/hs3bench/hsidrive \\
      --dataset hsidrive --out /data/hs3bench/hsidrive/hypersl --dtype float32 --device cuda
      the paper's export (train-mode BN per 5,000-pixel chunk) with the released weights
  python -m study.features --backbone ckpt.pt --data ROOT --dataset hyko2 --out DIR --bn-mode running --splits test
  python -m study.features --backbone ckpt.pt --data /nfs/hcv2 --dataset hcv2 --out /nfs/hcv2/hypersl \\
      --device cuda --autocast bf16 --shards 64 --cluster
      HCV2 over a Ray cluster (RAY_ADDRESS): 64 image shards, one Ray task (one GPU) each, bf16 autocast
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.features", epilog=EXAMPLES,
                                description="Export per-pixel HyperSL features in the HS3-Bench HDF5 layout.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="HyperSL checkpoint (.pt released layout or .safetensors), or "
                   "'default' for the cached sanity-pretrained cpu backbone")
    p.add_argument("--data", type=Path, default=None, help="folder with <dataset>_{train,val,test}.h5 "
                   "(default: the embedded synthetic data)")
    p.add_argument("--dataset", required=True, help="hyko2, hsidrive or hcv2")
    p.add_argument("--out", type=Path, required=True, help="output folder for <dataset>_<split>.h5")
    p.add_argument("--bn-mode", default="chunk", choices=BN_MODES,
                   help="chunk: train-mode BN statistics per chunk (paper); running: eval mode (default chunk)")
    p.add_argument("--chunk-size", type=int, default=None, help="pixels per chunk (default 5000; hyko2 50000)")
    p.add_argument("--dtype", default="float16", choices=tuple(DTYPES), help="stored dtype (default float16)")
    p.add_argument("--splits", default=None, help="comma list of splits (default train,val,test)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--autocast", default=DEFAULT_AUTOCAST, choices=AUTOCAST_MODES,
                   help=f"compute precision: off = fp32 as the paper, bf16 = bf16 autocast (other features, own "
                   f"cache key; see docs/performance.md) (default {DEFAULT_AUTOCAST})")
    p.add_argument("--shards", type=int, default=None, help="export each split as N contiguous image shards "
                   "(resumable; with --cluster one Ray task each)")
    p.add_argument("--cluster", action="store_true", help="run the shards as Ray tasks on the cluster at "
                   "RAY_ADDRESS (GPU tasks where it has GPUs); --data and --out must be on shared storage")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def check_args(args: argparse.Namespace, spec: object) -> None:
    """Every flag checked before the backbone is pretrained or loaded (that can take minutes)."""
    from study.store import check_writable

    if args.chunk_size is not None and args.chunk_size < 1:
        raise HsiStudyError(f"--chunk-size must be a positive number of pixels, got {args.chunk_size}")
    if args.threads is not None and args.threads < 1:
        raise HsiStudyError(f"--threads must be >= 1, got {args.threads}")
    if args.shards is not None and args.shards < 1:
        raise HsiStudyError(f"--shards must be a positive integer, got {args.shards}")
    for s in (args.splits or "").split(","):
        if s.strip():
            spec.file_name(s.strip())  # type: ignore[attr-defined]  # ValueError for an unknown split
    if args.backbone != "default" and not Path(args.backbone).is_file():
        raise HsiStudyError(f"--backbone {args.backbone}: no such file; give a HyperSL checkpoint (.pt or "
                            ".safetensors) or 'default'")
    if args.data is not None and not args.data.is_dir():
        raise HsiStudyError(f"--data {args.data}: no such folder; give the folder with the dataset's "
                            "<dataset>_{train,val,test}.h5 files (or omit --data for the synthetic data)")
    check_writable(args.out, subdirs=(), flag="--out")  # a file, a path under a file, read-only or a full disk


HINT = "interrupted; run the same command again to continue (finished splits and shards are kept)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with StopSignals(HINT, hard_stop=kill_children, keep=True):  # SIGINT, SIGTERM: stop; a second: at once
            return _main(args)
    except KeyboardInterrupt:
        print(HINT, file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    try:
        from study.data.specs import get_spec
        from study.models.checkpoints import checkpoint_hash, load_hypersl

        spec = get_spec(args.dataset)
        check_args(args, spec)
        if args.threads is not None:
            torch.set_num_threads(max(1, args.threads))
        if args.backbone == "default":
            from study.pretrain import ensure_default_backbone

            backbone = ensure_default_backbone(progress=not args.quiet)
        else:
            backbone = Path(args.backbone)
        data = args.data
        if data is None:
            from study.data.synthetic.generator import ensure_default_dataset

            data = ensure_default_dataset(spec, progress=not args.quiet)
        splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else list(spec.splits)
        for s in splits:
            spec.file_name(s)  # ValueError for an unknown split
        if args.shards is not None and args.shards < 1:
            raise HsiStudyError(f"--shards must be a positive integer, got {args.shards}")
        ckpt = checkpoint_hash(backbone)
        settings = dict(ckpt_hash=ckpt, bn_mode=args.bn_mode, chunk_size=args.chunk_size, dtype=args.dtype,
                        autocast=args.autocast, progress=not args.quiet)
        model = None
        for split in splits:
            target = args.out / spec.file_name(split)
            if args.cluster or (args.shards or 1) > 1:
                from study.features.shards import export_split_sharded

                out = export_split_sharded(backbone, data, args.dataset, split, target, shards=args.shards,
                                           cluster=args.cluster, device=args.device, **settings)
            else:
                model = model if model is not None else load_hypersl(backbone).to(args.device)
                out = export_split(model, data, args.dataset, split, target, device=args.device, **settings)
            print(out)
        return 0
    except (HsiStudyError, ValueError, OSError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2

