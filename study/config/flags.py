"""The flags of ``python -m study.run``: the parser (with examples naming the registry's strategies) and the
parsing of ``--dataset``. Turning parsed flags into a StudyConfig is :func:`study.run.config_from_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from study.data.specs import SPECS
from study.errors import ConfigError
from study.hub import weights_arg
from study.store import results_arg
from study.strategies import STRATEGIES, baseline_strategy


def _examples() -> str:
    """The --help examples, naming the registry's strategies (so a new strategy appears here by itself)."""
    base = baseline_strategy()
    feats = ",".join(s.name for s in STRATEGIES.values() if s.inputs == "features") or base
    rgb = next((s.name for s in STRATEGIES.values() if s.backbone == "rgb-vit"), None)
    recipes = ",".join(s.name for s in STRATEGIES.values() if s.recipe) or base
    lines = [
        (f"--strategy {base} --smoke", "a one-minute run: tiny synthetic cubes, tiny model, 2 trials x 2 epochs"),
        (f"--strategy {base} --demo --results results/demo",
         "the `make demo` budget: 3 fractions, 4 trials each, 2 final seeds (minutes on a laptop)"),
        (f"--strategy {base} --dataset hsidrive --fractions 0.01,0.05,0.1,1.0 --trials 16 --seeds 3",
         "a full study on the embedded synthetic HSI-Drive-like data"),
        (f"--strategy {base} --dataset hyko2 --data-root /data/hs3bench/hyko2 --results results/hyko2",
         "real HS3-Bench files: /data/hs3bench/hyko2/hyko2_{train,val,test}.h5"),
        (f"--strategy {feats} --smoke",
         "the HyperSL strategies: features of a locally pretrained backbone are computed once and cached"),
        ("--strategy all --backbone 5_base_mask95_checkpoint.pt --data-root /data/hs3bench/hyko2",
         "every strategy with the released HyperSL weights on real data"),
        (f"--protocol paper --strategy {recipes} --data-root /data/hs3bench/hyko2 "
         "--backbone hf://WeilKon/HyperSL/5_base_mask95_checkpoint.pt",
         "the paper's recipe verbatim with the released weights from the Hugging Face Hub (cached after the "
         "first download; pip install 'hsistudy[hub]')"),
    ]
    if rgb:
        lines += [(f"--strategy {rgb} --allow-random-init --smoke",
                   "the RGB ViT arm end to end with a random-init tiny ViT (plumbing only, no pretrained weights)"),
                  (f"--strategy {rgb},{base} --data-root /data/hs3bench/hyko2 --rgb-weights vit_s14.safetensors",
                   "cross-modality transfer from released DINOv2 ViT-S/14 weights (timm, DINOv2-hub or HF layout)")]
    lines += [(f"--strategy {base} --address auto --results /shared/results/study1",
               "on a running Ray cluster (ray up cluster.yaml), results on shared storage"),
              ("--strategy all --address auto --results s3://my-bucket/studies/hyko2",
               "results, checkpoints and the Optuna journal in an S3 bucket (credentials from the usual AWS "
               "variables)")]
    return "examples:\n" + "".join(f"  python -m study.run {cmd}\n      {why}\n" for cmd, why in lines)


def _readers(setting: str) -> str:
    """Which strategies read a strategy-specific setting (for its --help line)."""
    names = [s.name for s in STRATEGIES.values() if setting in s.settings]
    return ", ".join(names) if names else "no registered strategy"


def _study_flags(p: argparse.ArgumentParser) -> None:
    """Which strategies, where results go, protocol and config file."""
    g = p.add_argument_group("study")
    g.add_argument("--strategy", default=baseline_strategy(),
                   help=f"'all' or a comma list of: {', '.join(STRATEGIES)} (default: {baseline_strategy()})")
    g.add_argument("--protocol", default="tuned", choices=["tuned", "paper"],
                   help="tuned (default): Optuna + ASHA per cell, the published recipe tried first; paper: the "
                   "published recipe verbatim, no search (<= 500 epochs, patience 30, frozen backbone, float32 "
                   "features, the benchmark's seed-42 subsets, the released HyperSL weights via --backbone), K seeds "
                   "per cell; rows say protocol = paper. A flag that contradicts the recipe is refused unless "
                   "--allow-deviations")
    g.add_argument("--allow-deviations", action="store_true",
                   help="--protocol paper with flags that contradict the recipe (e.g. --epochs 3 --width tiny, or the "
                   "sanity backbone): rows then say protocol = paper-modified and list them in the deviations column; "
                   "the study gets an id (and default folder) of its own")
    g.add_argument("--results", type=results_arg, default=None,
                   help="results folder, or an object-store URI such as s3://bucket/prefix or gs://bucket/prefix "
                   "(default results/<study id>)")
    g.add_argument("--allow-extreme-values", action="store_true",
                   help="train on data holding a value beyond +-1e6 (no sensor value or feature reaches it: "
                   "normally refused, naming the file and sample) with a warning instead")
    g.add_argument("--repair", action="store_true",
                   help="move unreadable (truncated, corrupt) Parquet parts of --results into rows/quarantine/ "
                   "before the run; their trials are trained again (nothing is deleted)")
    g.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="a study file (TOML): any flag below as `name = value` (snake_case or kebab-case) and "
                   "search-space overrides per strategy, e.g. [search_space.<strategy>] lr = {type = \"float\", "
                   "low = 1e-4, high = 1e-2, log = true}; explicit flags win over the file, the file over presets. "
                   "A changed space gets cells of its own")
    g.add_argument("--print-config", nargs="?", const="toml", choices=["toml", "json"], default=None,
                   help="print the effective configuration (settings and every chosen strategy's search space) as "
                   "TOML (default; usable as --config) or JSON, and exit without running")
    g.add_argument("--log-to", default=None, metavar="TRACKERS",
                   help="also log every trial to experiment trackers through Ray Tune's callbacks: any of mlflow, "
                   "tensorboard, wandb (comma list). Offline by default: MLflow to <results>/mlflow.db, W&B offline "
                   "under <results>/wandb, TensorBoard events in <results>/tune; extras: pip install "
                   "'hsistudy[mlflow]', 'hsistudy[wandb]'")


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Which data and subsets."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="hyko2",
                   help=f"one or a comma list of {', '.join(SPECS)}, or all: one study, one store, one report "
                   "(default: hyko2)")
    g.add_argument("--data-root", type=Path, default=None,
                   help="folder with real HS3-Bench files <dataset>_{train,val,test}.h5; "
                   "omit to generate and use the embedded synthetic default")
    g.add_argument("--fractions", default=None,
                   help="labelled-training fractions, e.g. 0.01,0.05,0.1,0.25,0.5,1.0 (or 5%%,100%%)")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of the nested training subsets (default 0)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of generated data, backbones and features (default $HSISTUDY_CACHE or "
                   "~/.cache/hsistudy)")
    g.add_argument("--synthetic-size", default=None, help="synthetic image size HxW, e.g. 64x128")
    g.add_argument("--synthetic-images", default=None, help="synthetic train,val,test image counts, e.g. 40,12,16")


def _budget_flags(p: argparse.ArgumentParser) -> None:
    """The budget every cell gets (trials, epochs, seeds, ASHA, the deterministic search)."""
    g = p.add_argument_group("budget (the same for every cell)")
    g.add_argument("--trials", type=int, default=None, help="tuning trials per cell (e.g. 16)")
    g.add_argument("--epochs", type=int, default=None, help="max epochs per trial, ASHA's max_t (e.g. 100)")
    g.add_argument("--seeds", type=int, default=None, help="training seeds for the best config (e.g. 3)")
    g.add_argument("--grace-period", type=int, default=None, help="ASHA grace period in epochs (e.g. 10)")
    g.add_argument("--reduction-factor", type=int, default=None, help="ASHA reduction factor (default 2)")
    g.add_argument("--patience", type=int, default=None, help="early-stopping patience on val mIoU (default 30)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="search and early stopping follow trial order and results only, never timing: the same "
                   "command gives the same table on any machine or load (proposals in waves, ASHA decided in trial "
                   "order; deterministic CUDA kernels). Default on for --smoke/--demo, off for full studies "
                   "(docs/performance.md: its price)")
    g.add_argument("--search-batch", type=int, default=None, metavar="N",
                   help="--deterministic: trials proposed per wave, each from the earlier waves' results (default "
                   "--max-concurrent, else 4)")
    g.add_argument("--batch-size", type=int, default=None, help="images per step (default: HS3-Bench's, e.g. 16)")
    g.add_argument("--width", default=None, help="RU-Net width: full (64, 17.3 M params), small (16), tiny (8), "
                   "or an integer; default full on real data, small on synthetic")


def _backbones_flags(p: argparse.ArgumentParser) -> None:
    """Settings only some strategies read (they key those strategies' cells)."""
    g = p.add_argument_group("backbones (settings only some strategies read; they key those strategies' cells)")
    g.add_argument("--backbone", type=weights_arg, default=None,
                   help=f"HyperSL checkpoint (released layout or ours), read by {_readers('backbone')}: a path, or "
                   "hf://OWNER/REPO/FILE[@REVISION] from the Hugging Face Hub (local cache first, works with "
                   "HF_HUB_OFFLINE=1; pip install 'hsistudy[hub]'); default: the packaged sanity backbone (not the "
                   "released weights)")
    g.add_argument("--bn-mode", default=None, choices=["chunk", "running"],
                   help="feature export BatchNorm: chunk = train-mode statistics per pixel chunk (paper), "
                   "running = eval mode")
    g.add_argument("--feature-dtype", default=None, choices=["float16", "float32"],
                   help="storage of cached features (default float16; float32 under --protocol paper)")
    g.add_argument("--max-freeze-depth", type=int, default=None, metavar="K",
                   help="search freeze depths 0..K only (0: frozen backbones, features cached once); default: each "
                   "strategy's own range, 0 under --smoke/--demo (k > 0 runs the backbone in every training step)")
    g.add_argument("--features", default="auto", choices=["cache", "compute", "auto"],
                   help="where k = 0 trials of the HyperSL strategies get the frozen backbone's features: cache (the "
                   "export, read every epoch), compute (HyperSL runs in the trial on the raw spectra: no feature "
                   "files), auto (default: the cheaper per epoch by a cost model of bytes read against FLOPs at "
                   "the trials' device; the run header prints its numbers). Results agree within fp32 rounding, so "
                   "it keys no study, cell or trial; rows record it (features_mode)")
    g.add_argument("--rgb-weights", type=weights_arg, default=None,
                   help=f"DINOv2 ViT weights (.safetensors or .pth; timm, DINOv2-hub or Hugging Face layout), read "
                   f"by {_readers('rgb_weights')}: a path or hf://OWNER/REPO/FILE[@REVISION]; default: look in the "
                   "Hugging Face hub cache, never download")
    g.add_argument("--allow-random-init", action="store_true",
                   help="train a randomly initialised RGB ViT when no weights are found (else the run stops before "
                   "training)")
    g.add_argument("--vit-size", default=None, choices=["tiny", "small", "base", "large"],
                   help="RGB ViT size (default: the weights' size; else tiny under --smoke/--demo, small otherwise)")


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    """Where and how trials run (Ray, GPUs, loaders, data placement): runtime, not identity."""
    g = p.add_argument_group("cluster")
    g.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: $RAY_ADDRESS or a "
                   "local Ray on this machine")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    g.add_argument("--gpus", default="auto", choices=["auto", "on", "off"],
                   help="per-trial GPU requests: auto (if the cluster has GPUs at start), on, off")
    g.add_argument("--max-concurrent", type=int, default=None, help="max concurrent trials per cell")
    g.add_argument("--max-concurrent-cells", type=int, default=None, metavar="N",
                   help="cells in flight at once, each with its own Tuner, Optuna study and ASHA, sharing the "
                   "cluster (default: every pending cell; --demo: 1, which keeps its numbers deterministic)")
    g.add_argument("--max-failures", type=int, default=None,
                   help="retries of a failing trial, from its last checkpoint (default 3)")
    g.add_argument("--stage-data", type=Path, default=None, metavar="DIR",
                   help="copy the study's input files (data, features, weights) once per node to this local "
                   "folder before the node's first trial (checked by size and hash, shared by the node's trials): "
                   "use it when --data-root is on NFS/EFS, where reading HDF5 per batch is slow")
    g.add_argument("--loader-memory-gib", type=float, default=None, metavar="GIB",
                   help="host memory a trial's data loader may hold in prefetched batches (default 2; fewer "
                   "workers, then less prefetch, when HCV2-sized batches exceed it)")
    g.add_argument("--data-placement", default=None, choices=["auto", "device", "memory", "stream"],
                   help="where a trial's splits live while it trains: device (read once into its GPU's memory; "
                   "batches gathered, cropped and flipped there), memory (one host copy per node in shared memory, "
                   "shared by the node's trials), stream (read per batch from the files by loader workers), or auto "
                   "(default: device when they fit the trial's GPU share with room for the model, else memory when "
                   "they fit the node's memory, else stream; each cell says which and why). Results are the same "
                   "whichever: not part of the study id")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile every trial's model (opt-in: compile time pays off only in long GPU runs)")
    g.add_argument("--dashboard", action="store_true",
                   help="start the local Ray dashboard (needs ray[default]); bound to --dashboard-host")
    g.add_argument("--dashboard-host", default="127.0.0.1",
                   help="interface of the local dashboard (default 127.0.0.1: this machine only)")


def _presets_flags(p: argparse.ArgumentParser) -> None:
    """--smoke / --demo."""
    g = p.add_argument_group("presets")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="shrink everything: a run of about a minute")
    mode.add_argument("--demo", action="store_true", help="the `make demo` budget: 3 fractions x 4 trials, 2 seeds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a hyperspectral transfer-learning data-efficiency study with Ray Tune + Optuna + ASHA. "
        "For every (strategy, fraction) cell: tune on validation, re-train the best config with K seeds, "
        "evaluate once on test, append every row to a Parquet store.",
        epilog=_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _study_flags(p)
    _data_flags(p)
    _budget_flags(p)
    _backbones_flags(p)
    _cluster_flags(p)
    _presets_flags(p)
    return p


def parse_datasets(text: str) -> tuple[str, ...]:
    """``all`` or a comma list -> dataset names (order kept, duplicates dropped); ConfigError on an unknown one."""
    if text.strip() == "all":
        return tuple(SPECS)
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise ConfigError(f"--dataset is empty; give one or more of {', '.join(SPECS)}, or all")
    for n in names:
        if n not in SPECS:
            raise ConfigError(f"unknown dataset {n!r}; valid datasets: all, {', '.join(sorted(SPECS))}")
    return names
