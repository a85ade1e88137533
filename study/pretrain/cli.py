"""``python -m study.pretrain``: HyperSL masked spectral modelling on real remote-sensing spectra.

The released HyperSL weights cannot be downloaded on our machines, so the
embedded default backbone is pretrained here with the paper's recipe on ≈27 k
real spectra (a small-scale sanity pretraining, not a reproduction; every
checkpoint's card says so). This module is the command line; the settings, loop,
cards and cache live in the other modules of :mod:`study.pretrain`, whose face
exports their public names. The recipe, the opt-in deviations and what they
measured: docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from study.errors import HsiStudyError
from study.pretrain.cache import ensure_default_backbone
from study.pretrain.config import (
    default_config,
)
from study.pretrain.loop import (
    PretrainStopped,
    pretrain,
    resolve_device,
    resume_path,
)
from study.store import check_output_file

EXAMPLES = """\
examples:
  python -m study.pretrain
      pretrain (or find cached) the default `cpu` backbone: a few minutes on 2 CPU cores
  python -m study.pretrain --smoke --out /tmp/hypersl-tiny.pt
      a seconds-long run of the tiny size, for CI
  python -m study.pretrain --size small --steps 20000 --batch-size 256 --device cuda --out ckpt/hypersl-small.pt
      a longer run of the paper's size on a GPU; writes .card.json / .card.md next to it
  python -m study.pretrain --size small --steps 20000 --device cuda --time-limit 540 --out ckpt/hypersl-small.pt
      the same in slots of 9 minutes: exits 3 with a resume point; the same command continues (exit 0 when done)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m study.pretrain", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default=None, help="HyperSL size: tiny, cpu (default), small, base, large, huge")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 630 for cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="spectra per source per step (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 5e-4)")
    p.add_argument("--mask-ratio", type=float, default=None, help="fraction of band tokens hidden (default 0.95)")
    p.add_argument("--min-visible", type=int, default=None, help="keep at least this many band tokens visible "
                   "(the mask ratio is lowered per batch for short spectra; default: the size's default)")
    p.add_argument("--mask-input", action=argparse.BooleanOptionalAction, default=None,
                   help="zero the masked bands before the stem too (default: the size's default)")
    p.add_argument("--z-recon", type=float, default=None, metavar="WEIGHT", help="weight of the auxiliary loss "
                   "that reconstructs the spectrum from the feature z alone (default 0: off, the paper's recipe)")
    p.add_argument("--z-recon-mask", type=float, default=None, metavar="RATIO",
                   help="mask ratio of the encoder pass that auxiliary loss decodes (default 0)")
    p.add_argument("--ip-holdout", default=None, metavar="SPEC", help="Indian Pines blocks to keep out of "
                   "pretraining: 'checker20:test' (the strict evaluation variant) or 'checker20:test+val'")
    p.add_argument("--no-simulated", action="store_true", help="leave out earthlib's PROSAIL-simulated canopies")
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (.pt or .safetensors); default: the "
                   "cache, $HSISTUDY_CACHE/backbones/ or ~/.cache/hsistudy/backbones/")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root when --out is not given")
    p.add_argument("--force", action="store_true", help="pretrain even if the cache already holds the checkpoint")
    p.add_argument("--smoke", action="store_true", help="tiny size, 8 steps of 32: seconds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for the cached "
                   "default backbone, so its weights do not depend on the machine's cores; torch's choice with "
                   "--out, where on a busy shared machine 1 can be much faster)")
    p.add_argument("--save-every", type=int, default=None, metavar="STEPS",
                   help="write a resume point every STEPS steps (default: about 20 per run; 0: never); a run that is "
                        "killed continues from the last one when the same command is run again")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop after SECONDS, save a resume point and exit 3; run the same command again to continue")
    p.add_argument("--device", default="cpu", help="cpu (default: the same numbers everywhere), cuda, cuda:N or "
                   "auto (a GPU when torch sees one)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        size = args.size or ("tiny" if args.smoke else "cpu")
        over: dict[str, Any] = {"seed": args.seed, "include_simulated": not args.no_simulated}
        for key, value in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                           ("mask_ratio", args.mask_ratio), ("min_visible", args.min_visible),
                           ("mask_input", args.mask_input), ("ip_holdout", args.ip_holdout),
                           ("z_recon", args.z_recon), ("z_recon_mask", args.z_recon_mask)):
            if value is not None:
                over[key] = value
        if "lr" in over and not (math.isfinite(over["lr"]) and over["lr"] > 0):
            raise HsiStudyError(f"--lr must be a positive number, got {over['lr']}")
        config = default_config(size, smoke=args.smoke, **over)
        if args.threads is not None:
            if args.threads < 1:
                raise HsiStudyError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        resolve_device(args.device)  # a missing GPU stops here, before any data is read
        if args.out is not None:  # a folder, a path under a file or a read-only folder: before training
            check_output_file(args.out, "--out", "hypersl.pt")
        if args.save_every is not None and args.save_every < 0:
            raise HsiStudyError(f"--save-every must be >= 0 (0: never), got {args.save_every}")
        run = {"device": args.device, "save_every": args.save_every, "time_limit": args.time_limit}
        if args.out is None:
            path = ensure_default_backbone(args.cache_dir, config=config, progress=not args.quiet, force=args.force,
                                           threads=args.threads or 1, **run)
        else:
            path = args.out
            if args.force:
                resume_path(path).unlink(missing_ok=True)
            pretrain(config, path, progress=not args.quiet, **run)
        card = json.loads(path.with_name(path.stem + ".card.json").read_text())
        print(f"{path}  (hash {card['checkpoint_hash']}, {card['steps']} steps, final loss {card['final_loss']:.4f}, "
              f"{card['wall_time_s']:.0f} s)")
        return 0
    except PretrainStopped as stopped:
        print(str(stopped), file=sys.stderr)
        return 3
    except (HsiStudyError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2

