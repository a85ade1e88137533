"""Command line of :func:`study.prepare.prepare` (``python -m study.prepare --help``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.errors import HsiStudyError
from study.prepare import DATASETS, DTYPES, FORMATS, HCV2_SPLITS, prepare
from study.prepare.writer import SplitResult
from study.progress import StopSignals, kill_children

HINT = "interrupted; run the same command again to continue (finished images are kept)"

EXAMPLES = """\
examples:
  python -m study.prepare hyko2 --raw data/raw/hyko2 --out data/hs3bench/hyko2
      the .mat files of vis_annotated.zip -> hyko2_{train,val,test}.h5 (81/32/49 images)
  python -m study.prepare hsidrive --raw data/raw/hsidrive/Image_dataset --out data/hs3bench/hsidrive
      cubes_fl32/*_TC.mat + labels/*.png -> hsidrive_{train,val,test}.h5 (451/150/151)
  python -m study.prepare hcv2 --raw data/raw/hcv2 --out data/hs3bench/hcv2 --workers 4
      train/ + test/ (.hsd, gt/) -> hcv2_*.h5 at half resolution, new split 949/105/276
  python -m study.prepare hcv2 --raw data/raw/hcv2 --out data/hs3bench/hcv2_old --hcv2-split old
      HS3-Bench's original HCV2 split 527/105/422 (all from train/)
  python -m study.prepare hcv2 --raw data/raw/hcv2 --out data/hs3bench/hcv2_pca --format pca
      HCV2 kept as the release's PCA scores (D = 6 of 128 bands): ~20x smaller, decoded when read
then: python -m study.run --dataset hyko2 --data-root data/hs3bench/hyko2 ...
A re-run skips finished split files and continues an interrupted one.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.prepare",
        description="Convert a downloaded HS3-Bench dataset release into the HDF5 split files "
        "python -m study.run --data-root reads.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=DATASETS, help="which release --raw holds")
    p.add_argument("--raw", type=Path, required=True, help="the extracted release folder (see examples)")
    p.add_argument("--out", type=Path, required=True, help="folder for <dataset>_{train,val,test}.h5 (created)")
    p.add_argument("--splits", type=Path, default=None,
                   help="folder with your own {train,val,test}_samples.csv (default: the HS3-Bench lists shipped "
                   "in study/splits/)")
    p.add_argument("--hcv2-split", choices=HCV2_SPLITS, default=None,
                   help="HCV2 only: new = 949/105/276 with the official test release (cross-domain paper, "
                   "default); old = HS3-Bench's 527/105/422")
    p.add_argument("--format", choices=FORMATS, default="cube", dest="fmt",
                   help="cube: the decoded cubes (default, the HS3-Bench layout); pca (hcv2 only): per image the "
                   "release's scores (halved like the cube), coefficients and means, decoded by the reader")
    p.add_argument("--storage-dtype", choices=DTYPES, default="float32",
                   help="dtype of the stored cubes or scores (default float32); bfloat16 is stored as uint16 "
                   "bit patterns (HDF5 has no bfloat16), recorded in the root attribute storage_dtype")
    p.add_argument("--workers", type=int, default=1, help="processes decoding images in parallel (default 1)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def _summary(dataset: str, r: SplitResult) -> str:
    if r.status == "exists":
        return f"{dataset} {r.split}: {r.path} exists, kept (delete it to convert again)"
    kept = f", {r.kept} kept from an interrupted run" if r.kept else ""
    size = r.path.stat().st_size / 2**20
    return (f"{dataset} {r.split}: {r.written + r.kept} images -> {r.path} ({size:.1f} MiB; "
            f"{r.written} written{kept}; {r.seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.hcv2_split is not None and args.dataset != "hcv2":
            raise HsiStudyError(f"--hcv2-split is for hcv2 only, not {args.dataset}")
        with StopSignals(HINT, hard_stop=kill_children):  # SIGINT, SIGTERM: stop; a second one: at once
            prepare(args.dataset, args.raw, args.out, splits_dir=args.splits, hcv2_split=args.hcv2_split or "new",
                    workers=args.workers, fmt=args.fmt, storage_dtype=args.storage_dtype,
                    on_split=lambda r: print(_summary(args.dataset, r), flush=True))
    except HsiStudyError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(HINT, file=sys.stderr)
        return 130
    print(f"next: python -m study.run --dataset {args.dataset} --data-root {args.out} ...")
    return 0

