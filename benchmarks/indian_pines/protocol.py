"""One run of the benchmark: per seed, the arms' backbones and features, then per layout and label budget
the heads and their scores; returns the JSON result (rows, summary, protocol, pretraining cards, machine)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from benchmarks.indian_pines.backbones import features, given_backbone, pretrained_backbone, random_backbone
from benchmarks.indian_pines.data import kept_classes, pick_pixels, scene
from benchmarks.indian_pines.heads import scores, train_head, train_heads_es
from benchmarks.indian_pines.summary import summarize
from study.data.pretrain_data import IP_CELL, IP_GUARD, IP_MIN_PIXELS, indian_pines, indian_pines_split
from study.data.specs import get_spec

#: Pretraining variant -> the arm name its backbone's rows get.
VARIANT_ARMS = {"strict": "pretrained", "transductive": "pretrained_transductive"}
#: The arm of a checkpoint given with --backbone.
GIVEN_ARM = "pretrained_checkpoint"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for the parsed command line ``args``: every seed, layout, label budget and arm."""
    from study.models.checkpoints import load_hypersl

    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    budgets: list[int | None] = [None if b.strip() == "all" else int(b) for b in args.labels.split(",") if b.strip()]
    record = tuple(sorted({int(e) for e in args.record.split(",") if e.strip()} | {args.epochs}))
    split = indian_pines_split()
    classes = kept_classes(split)
    if args.head == "es":
        if args.eval != "test":
            raise SystemExit("--head es early-stops on the val quarters; score them with --head fixed --eval val")
        fit_mask, eval_mask = split["fit"], split["test"]
    else:
        fit_mask, eval_mask = (split["train"], split["test"]) if args.eval == "test" else (split["fit"], split["val"])
    variants = [] if args.backbone else [v.strip() for v in args.variants.split(",") if v.strip()]
    given = given_backbone(args.backbone) if args.backbone else None
    cards: dict[str, dict[str, Any]] = {"given": given[1]} if given else {}
    if given is None and (not variants or set(variants) - set(VARIANT_ARMS)):
        raise SystemExit(f"--variants must name strict and/or transductive, got {args.variants!r}")
    strict_holdout = f"checker{IP_CELL}:test" if args.eval == "test" else f"checker{IP_CELL}:test+val"
    holdouts = {v: "" if v == "transductive" else strict_holdout for v in variants}
    _, labels = indian_pines()
    flat_labels = labels.reshape(-1)
    remap = np.full(int(flat_labels.max()) + 1, -1)
    remap[classes] = np.arange(classes.size)
    eval_idx = pick_pixels(eval_mask, classes, None, 0)
    val_idx = pick_pixels(split["val"], classes, None, 0)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    n_pre = args.pretrain_seeds or seeds.stop
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for seed in seeds:
        pseed = seed % n_pre
        models: dict[str, torch.nn.Module] = {}
        for variant in variants:
            path, card = pretrained_backbone(args, pseed, holdouts[variant])
            key = f"{variant}/seed{pseed}"
            cards[key] = {k: card[k] for k in ("checkpoint_hash", "settings_hash", "settings", "steps",
                                               "wall_time_s", "threads", "initial_loss", "final_loss",
                                               "spectra_seen")}
            cards[key]["path"] = str(path)
            cards[key]["indian_pines_spectra"] = card["data"]["indian_pines"]["spectra"]
            models[VARIANT_ARMS[variant]] = load_hypersl(path)
        if given is not None:
            models[GIVEN_ARM] = given[0]
        models["random"] = random_backbone(given[0].config if given else args.size, pseed)
        for layout in layouts:
            feats = {arm: features(m, layout, args.bn_mode, args.chunk) for arm, m in models.items()}
            feats["spectra"] = scene(layout)[0].reshape(-1, len(get_spec(layout).wavelength_array()))
            for budget in budgets:
                train_idx = pick_pixels(fit_mask, classes, budget, seed)
                y_train = remap[flat_labels[train_idx]]
                y_eval = remap[flat_labels[eval_idx]]
                base = {"layout": layout, "labels": "all" if budget is None else str(budget), "seed": seed,
                        "train_pixels": int(train_idx.size), "eval_pixels": int(eval_idx.size)}
                if args.head == "es":
                    rows.extend(_es_rows(args, feats, train_idx, y_train, val_idx,
                                         remap[flat_labels[val_idx]], eval_idx, y_eval, classes.size, seed, base))
                    continue
                for arm, x in feats.items():
                    _, preds = train_head(x[train_idx], y_train, classes.size, seed, max(record), record=record,
                                          x_eval=x[eval_idx])
                    for epoch, pred in preds.items():
                        rows.append({**base, "epochs": epoch, "arm": arm, **scores(y_eval, pred, classes.size)})
            final_epochs = "es" if args.head == "es" else args.epochs
            print(f"[indian_pines_fc] seed {seed} {layout}: " + ", ".join(
                f"{r['arm']}/{r['labels']} {r['oa']:.3f}" for r in rows
                if r["seed"] == seed and r["layout"] == layout and r["epochs"] == final_epochs),
                file=sys.stderr, flush=True)
    summary = summarize(rows)
    _, labels = indian_pines()
    result = {
        "benchmark": "indian_pines_fc",
        "question": "HyperSL-FC on Indian Pines, spatially disjoint split: pretrained backbone vs random init",
        "command": "python -m benchmarks.indian_pines_fc " + shlex.join(sys.argv[1:]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "protocol": {
            "split": f"checkerboard of {IP_CELL}x{IP_CELL} px cells, even cells train / odd cells test, "
                     f"{IP_GUARD} px guard at every cell border (train-test distance >= {2 * IP_GUARD + 1} px)",
            "eval": args.eval, "variants": variants, "pretraining_holdout": holdouts,
            "classes_kept": [int(c) for c in classes],
            "classes_dropped": [int(c) for c in range(1, int(labels.max()) + 1) if c not in classes],
            "class_rule": f">= {IP_MIN_PIXELS} labelled px in both training and test cells",
            "train_pixels_all": int(pick_pixels(fit_mask, classes, None, 0).size), "eval_pixels": int(eval_idx.size),
            "input_scaling": "Gaussian-SRF resampling to the layout, min-max per band over the whole scene "
                             "(as in pretraining)",
            "features": {"bn_mode": args.bn_mode, "chunk": args.chunk, "mask_ratio": 0},
            "head": {"model": "BatchNorm1d(D) -> Linear(D, K)", "optimizer": "AdamW lr 1e-4 wd 1e-4 eps 1e-8",
                     "sub_batch": 8192, "loss": "cross-entropy", "protocol": args.head,
                     **({"trained_on": "fit quarters of the training cells",
                         "early_stopping": f"val quarters' mIoU every {args.eval_every} steps, patience "
                                           f"{args.patience}, best-val weights restored, <= {args.max_steps} steps"}
                        if args.head == "es" else {"trained_on": f"{args.eval} protocol training pixels",
                                                   "epochs": args.epochs})},
            "seeds": list(seeds), "pretrain_seeds": n_pre,
            "size": given[0].config.as_dict() if given else args.size,
        },
        "pretraining": cards,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "numpy": np.__version__},
        "wall_time_s": round(time.perf_counter() - t_start, 1),
        "summary": summary,
        "rows": rows,
    }
    return result


def _es_rows(args: argparse.Namespace, feats: dict[str, np.ndarray], train_idx: np.ndarray, y_train: np.ndarray,
             val_idx: np.ndarray, y_val: np.ndarray, eval_idx: np.ndarray, y_eval: np.ndarray, n_classes: int,
             seed: int, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Early-stopped heads for every arm (arms with the same feature width share one batched pass)."""
    by_dim: dict[int, list[str]] = {}
    for arm, x in feats.items():
        by_dim.setdefault(x.shape[1], []).append(arm)
    rows = []
    for arms in by_dim.values():
        heads, best = train_heads_es([feats[a][train_idx] for a in arms], y_train, [feats[a][val_idx] for a in arms],
                                     y_val, n_classes, seed, args.eval_every, args.patience, args.max_steps)
        with torch.inference_mode():
            pred = heads(torch.from_numpy(np.ascontiguousarray(
                np.stack([feats[a][eval_idx] for a in arms]), dtype=np.float32))).argmax(2).numpy()
        for h, arm in enumerate(arms):
            rows.append({**base, "epochs": "es", "arm": arm, "stopped_step": best[h]["step"],
                         "val_miou": best[h]["val_miou"], **scores(y_eval, pred[h], n_classes)})
    return rows
