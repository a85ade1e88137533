"""HyperSL-FC on Indian Pines with a spatially disjoint split: does our pretraining beat random init?

``python -m benchmarks.indian_pines_fc --threads 1 --variants strict,transductive``
answers issue 3's check ("HyperSL-FC with our pretrained backbone beats the same
head on a randomly initialised backbone") reproducibly. Protocol:

Split (``study.data.pretrain_data.indian_pines_split``, data.md §5.2)
    A checkerboard of 20 x 20 px cells over the 145 x 145 scene: even cells
    (row + column cell index even) are training blocks, odd cells test blocks;
    2 px at every cell border belong to neither, so a training pixel and a test
    pixel are at least 5 px apart. A checkerboard rather than halves or strips,
    because Indian Pines' fields are large: with 2 or 4 vertical strips, half of
    the classes sit on one side only. Kept: the 13 classes with >= 20 labelled
    pixels on *both* sides (3,217 training / 3,180 test pixels). Dropped: 1 Alfalfa
    (0 training px), 7 Grass-pasture-mowed and 9 Oats (0 test px), the three
    classes of < 50 px that the usual 9-13-class protocols drop too.

Choosing settings without the test cells (``--head fixed --eval val``)
    The head is trained on the diagonal quarters of the training cells (``fit``)
    and scored on their anti-diagonal quarters (``val``; 1 px more guard on each
    side of the quarter borders), and the pretraining also leaves out the
    validation quarters. The pretraining recipe was screened this way; the
    test cells were scored only by final runs (their JSON files are kept in
    ``benchmarks/results/``).

Pretraining variants (``--variants``)
    ``strict`` (default): each backbone is pretrained with ``default_config``
    except that every pixel of the test cells (labelled or not, guard bands
    included) is removed from the Indian Pines source
    (``ip_holdout="checker20:test"``). ``transductive``: exactly the study's
    default backbone data (all 21,025 pixels, unlabelled), to be reported as
    "transductive SSL" (data.md §5.2). Seed s pretrains with seed s.

Arms (same head, same seeds)
    ``pretrained`` / ``pretrained_transductive``: our HyperSL. ``random``: the
    same architecture built after ``torch.manual_seed(s)``, i.e. exactly the
    weights pretraining seed s started from. ``spectra``: the head on the scaled
    spectra themselves (the in-domain per-pixel baseline, for scale).

Inputs and features
    The scene is resampled with Gaussian SRFs to each target layout (HSI-Drive-like
    25 bands 535-975 nm, HyKo-like 15 bands 468-643 nm; optional HCV2-like 128
    bands) and min-max scaled per band over the whole scene: the transform the
    pretraining applies (``pretrain_data.to_sensor``) and HyperSL's own downstream
    protocol (benchmark.md §3.7), not the cross-domain export's raw values (§4.2).
    Features: ``study.features.export_image``, mask ratio 0, raster-order chunks of
    5,000 px, ``--bn-mode chunk`` (the paper's per-chunk BatchNorm statistics;
    default) or ``running``.

Head (HyperSL-FC, benchmark.md §4.1)
    BatchNorm1d(D) -> Linear(D, 13) on the frozen features, AdamW lr 1e-4,
    wd 1e-4, eps 1e-8, plain cross-entropy, one step per sub-batch of 8,192
    shuffled training pixels (here: full batch). ``--head es`` (default) follows
    the paper's protocol: trained on the ``fit`` quarters of the training cells,
    early stopping on the ``val`` quarters' mIoU (checked every 500 steps, our
    "epoch"; patience 30; best-val weights restored; <= 300,000 steps), scored
    on the test cells; the label budget subsamples ``fit`` only, validation stays
    complete (§4.4). Each arm stops on its own; arms of equal feature width train
    in one batched pass (:class:`BatchedFC`, numerically the separate heads).
    ``--head fixed`` is the earlier protocol: a fixed ``--epochs`` (10,000) on
    all training cells, no early stopping; with one full-batch step per epoch
    the heads are then still improving, so it compares how fast a linear head
    fits rather than what the features allow. Label budgets: every labelled
    training pixel (``all``) and ``10`` random pixels per class.

A given checkpoint (``--backbone CKPT``)
    The released ``5_base_mask95_checkpoint.pt`` (or a longer pretraining, e.g.
    ``python -m study.pretrain --size small --device cuda ...``) is evaluated
    as the ``pretrained_checkpoint`` arm against a random init of its own
    architecture: the check for whoever has those weights; none were pretrained
    on Indian Pines' test cells.

Output: a table of mean +- sd over seeds of OA, balanced accuracy and Cohen's
kappa per layout, label budget and arm, with the paired per-seed OA difference
to ``random``; and ``benchmarks/results/indian_pines_fc.json`` (per-seed rows,
summary, pretraining cards, machine, exact command).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import write_result
from study.data.pretrain_data import (
    INDIAN_PINES_WAVELENGTHS,
    IP_CELL,
    IP_GUARD,
    IP_MIN_PIXELS,
    indian_pines,
    indian_pines_split,
    to_grid,
    to_sensor,
)
from study.data.specs import get_spec

RESULTS = Path(__file__).resolve().parent / "results" / "indian_pines_fc.json"
LAYOUT_NAMES = {"hsidrive": "HSI-Drive-like 25 bands", "hyko2": "HyKo-like 15 bands", "hcv2": "HCV2-like 128 bands"}
#: Pretraining variant -> the arm name its backbone's rows get.
VARIANT_ARMS = {"strict": "pretrained", "transductive": "pretrained_transductive"}
#: The arm of a checkpoint given with --backbone.
GIVEN_ARM = "pretrained_checkpoint"


# ---------------------------------------------------------------- data
@lru_cache(maxsize=1)
def _scene_on_grid() -> np.ndarray:
    cube, _ = indian_pines()
    return to_grid(np.asarray(INDIAN_PINES_WAVELENGTHS), cube.reshape(-1, cube.shape[-1]).astype(np.float64))


def scene(layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Indian Pines at ``layout``'s bands, min-max scaled per band over the scene: (145, 145, C) and (C,) nm."""
    _, labels = indian_pines()
    image = to_sensor(_scene_on_grid(), layout).reshape(*labels.shape, -1)
    return image, get_spec(layout).wavelength_array()


def kept_classes(split: dict[str, np.ndarray]) -> np.ndarray:
    """Labels (1-based) with >= IP_MIN_PIXELS labelled pixels in both the training and the test cells."""
    _, labels = indian_pines()
    n = int(labels.max()) + 1
    tr = np.bincount(labels[split["train"]], minlength=n)
    te = np.bincount(labels[split["test"]], minlength=n)
    return np.flatnonzero((tr >= IP_MIN_PIXELS) & (te >= IP_MIN_PIXELS) & (np.arange(n) > 0))


def pick_pixels(mask: np.ndarray, classes: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Flat indices of the labelled pixels in ``mask`` of the kept classes (``per_class`` random ones each)."""
    _, labels = indian_pines()
    flat = labels.reshape(-1)
    idx = np.flatnonzero(mask.reshape(-1) & np.isin(flat, classes))
    if per_class is None:
        return idx
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(np.concatenate([rng.permutation(idx[flat[idx] == c])[:per_class] for c in classes]))


# ---------------------------------------------------------------- head and metrics
def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, epochs: int, lr: float = 1e-4,
               weight_decay: float = 1e-4, sub_batch: int = 8192, record: tuple[int, ...] = (),
               x_eval: np.ndarray | None = None) -> tuple[torch.nn.Module, dict[int, np.ndarray]]:
    """HyperSL-FC: BatchNorm1d(D) -> Linear(D, K), AdamW, one step per ``sub_batch`` shuffled pixels per epoch.

    Returns the head (eval mode) and its predictions on ``x_eval`` after each epoch in ``record``.
    """
    gen = torch.Generator().manual_seed(20_000 + seed)
    torch.manual_seed(20_000 + seed)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1]), torch.nn.Linear(x.shape[1], n_classes))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y).long()
    preds: dict[int, np.ndarray] = {}
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(xt.shape[0], generator=gen)
        for start in range(0, xt.shape[0], sub_batch):
            sel = order[start : start + sub_batch]
            if sel.numel() < 2:  # BatchNorm needs 2 samples
                continue
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(head(xt[sel]), yt[sel]).backward()
            opt.step()
        if epoch in record and x_eval is not None:
            preds[epoch] = predict(head, x_eval)
    return head.eval(), preds


class BatchedFC(torch.nn.Module):
    """H independent HyperSL-FC heads, BatchNorm1d(D) -> Linear(D, K), evaluated in one batched pass.

    Why: the early-stopped protocol runs up to hundreds of thousands of tiny
    full-batch steps per head, where Python overhead dominates; stacking the arms'
    heads makes one step cost about as much as one head's. The heads stay
    independent: the loss is the sum of per-head losses, so each head's gradient
    is the one it would get alone, and AdamW is element-wise. BatchNorm is written
    out to match ``torch.nn.BatchNorm1d`` (biased batch variance in training,
    running statistics with momentum 0.1 and the unbiased variance in eval,
    eps 1e-5); every head starts from the same ``torch.nn.Linear`` init.
    """

    def __init__(self, heads: int, dim: int, n_classes: int, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000 + seed)
            lin = torch.nn.Linear(dim, n_classes)
        self.weight = torch.nn.Parameter(lin.weight.detach().t().expand(heads, dim, n_classes).clone())
        self.bias = torch.nn.Parameter(lin.bias.detach().expand(heads, 1, n_classes).clone())
        self.gamma = torch.nn.Parameter(torch.ones(heads, 1, dim))
        self.beta = torch.nn.Parameter(torch.zeros(heads, 1, dim))
        self.register_buffer("running_mean", torch.zeros(heads, 1, dim))
        self.register_buffer("running_var", torch.ones(heads, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(H, N, D) -> (H, N, K) logits."""
        if self.training:
            mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                self.running_mean.lerp_(mean, 0.1)
                self.running_var.lerp_(var * n / max(n - 1, 1), 0.1)
        else:
            mean, var = self.running_mean, self.running_var
        xn = (x - mean) * torch.rsqrt(var + 1e-5) * self.gamma + self.beta
        return torch.baddbmm(self.bias, xn, self.weight)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def mean_iou(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean IoU over the classes present in ``y_true`` (the paper's early-stopping metric)."""
    cm = confusion(y_true, y_pred, n_classes)
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    present = cm.sum(1) > 0
    return float(np.mean(inter[present] / np.maximum(union[present], 1)))


def train_heads_es(xs: list[np.ndarray], y: np.ndarray, xs_val: list[np.ndarray], y_val: np.ndarray,
                   n_classes: int, seed: int, eval_every: int, patience: int, max_steps: int,
                   lr: float = 1e-4, weight_decay: float = 1e-4, sub_batch: int = 8192,
                   ) -> tuple[BatchedFC, list[dict[str, float]]]:
    """HyperSL-FC heads (one per feature set in ``xs``, same dim) with the paper's early stopping.

    AdamW (lr 1e-4, wd 1e-4, eps 1e-8), one step per ``sub_batch`` shuffled pixels;
    every ``eval_every`` steps (our "epoch") each head is scored on the validation
    pixels and keeps its best-val-mIoU weights; a head stops after ``patience``
    evaluations without improvement, the run when all heads stopped or after
    ``max_steps``. Returns the heads restored to their best weights (eval mode)
    and per head the step and val mIoU it was restored at.
    """
    gen = torch.Generator().manual_seed(20_000 + seed)
    heads = BatchedFC(len(xs), xs[0].shape[1], n_classes, seed)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-8)
    xt = torch.from_numpy(np.ascontiguousarray(np.stack(xs), dtype=np.float32))
    xv = torch.from_numpy(np.ascontiguousarray(np.stack(xs_val), dtype=np.float32))
    yt = torch.from_numpy(y).long()
    n_heads, n = len(xs), xt.shape[1]
    best = [{"step": 0, "val_miou": -1.0} for _ in range(n_heads)]
    snapshot = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    stale = np.zeros(n_heads, dtype=int)
    step, order, pos = 0, torch.randperm(n, generator=gen), 0
    while step < max_steps and (stale < patience).any():
        heads.train()
        for _ in range(eval_every):
            if pos >= n:
                order, pos = torch.randperm(n, generator=gen), 0
            sel = order[pos : pos + sub_batch]
            pos += sub_batch
            if sel.numel() < 2:  # BatchNorm needs 2 samples
                continue
            opt.zero_grad(set_to_none=True)
            logits = heads(xt[:, sel])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, n_classes), yt[sel].repeat(n_heads), reduction="none").view(n_heads, -1)
            loss.mean(1).sum().backward()
            opt.step()
            step += 1
        heads.eval()
        with torch.inference_mode():
            pred = heads(xv).argmax(2).numpy()
        for h in range(n_heads):
            if stale[h] >= patience:
                continue
            miou = mean_iou(y_val, pred[h], n_classes)
            if miou > best[h]["val_miou"]:
                best[h] = {"step": step, "val_miou": miou}
                stale[h] = 0
                for k, v in heads.state_dict().items():
                    snapshot[k][h] = v[h]
            else:
                stale[h] += 1
    heads.load_state_dict(snapshot)
    return heads.eval(), best


@torch.inference_mode()
def predict(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    head.eval()
    return head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).argmax(1).numpy()


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Overall accuracy, balanced accuracy (mean recall over the classes present) and Cohen's kappa."""
    cm = confusion(y_true, y_pred, n_classes)
    n = cm.sum()
    oa = np.trace(cm) / n
    support = cm.sum(1)
    bacc = float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))
    pe = float((cm.sum(0) * support).sum()) / n**2
    return {"oa": float(oa), "balanced_accuracy": bacc, "kappa": float((oa - pe) / (1 - pe)) if pe < 1 else 0.0}


# ---------------------------------------------------------------- backbones and features
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


def _given_backbone(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
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


# ---------------------------------------------------------------- the benchmark
def _parse_set(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.replace("-", "_"), tuple(parsed) if isinstance(parsed, list) else parsed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.indian_pines_fc", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="protocol: see the module docstring (python -c 'import benchmarks."
                                       "indian_pines_fc as m; print(m.__doc__)')")
    p.add_argument("--size", default="cpu", help="HyperSL size of both arms (default cpu)")
    p.add_argument("--backbone", type=Path, default=None, metavar="CKPT",
                   help="evaluate this HyperSL checkpoint (the released layout, e.g. 5_base_mask95_checkpoint.pt, or "
                        "one from python -m study.pretrain) instead of pretraining here; the random arm then has "
                        "its architecture; --size, --steps, --pretrain-set and --variants do not apply")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: default_config's)")
    p.add_argument("--pretrain-set", type=_parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="override a PretrainConfig field (repeatable), e.g. --pretrain-set min_visible=4")
    p.add_argument("--seeds", type=int, default=5, help="seeds s = 0..N-1: pretraining, random init and head seed")
    p.add_argument("--first-seed", type=int, default=0,
                   help="start at this seed (seeds first .. first+N-1; to split a run over processes, then --combine)")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                   help="merge result files of the same protocol with disjoint seeds into --out (nothing is run)")
    p.add_argument("--pretrain-seeds", type=int, default=None,
                   help="distinct pretrainings (seed s uses pretraining s mod this; default: one per seed)")
    p.add_argument("--layouts", default="hsidrive,hyko2", help="comma list of hsidrive, hyko2, hcv2")
    p.add_argument("--labels", default="all,10", help="comma list of label budgets: all and/or pixels per class")
    p.add_argument("--variants", default="strict", help="comma list: strict (test cells kept out of pretraining; "
                   "default) and/or transductive (the default backbone's data: all pixels seen, unlabelled)")
    p.add_argument("--eval", choices=("test", "val"), default="test",
                   help="test: train on training cells, score test cells; val: fit/val inside the training cells")
    p.add_argument("--head", choices=("es", "fixed"), default="es",
                   help="es (default): the paper's head protocol, trained on the fit quarters of the training cells "
                        "with early stopping on the val quarters' mIoU and the best-val weights restored; fixed: "
                        "--epochs full-batch epochs on all training cells, no early stopping (the earlier protocol)")
    p.add_argument("--eval-every", type=int, default=500, help="es: optimizer steps per validation (default 500)")
    p.add_argument("--patience", type=int, default=30, help="es: validations without improvement (default 30)")
    p.add_argument("--max-steps", type=int, default=300_000, help="es: step limit per head (default 300000)")
    p.add_argument("--epochs", type=int, default=10000, help="fixed: head epochs (default 10000)")
    p.add_argument("--record", default="", help="fixed: also score after these epochs (comma list)")
    p.add_argument("--bn-mode", choices=("chunk", "running"), default="chunk", help="feature export BatchNorm mode")
    p.add_argument("--chunk", type=int, default=5000, help="export chunk size in pixels (default 5000)")
    p.add_argument("--cache-dir", type=Path, default=None, help="backbone cache root (default: the study cache)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default with --eval test: benchmarks/results/indian_pines_fc.json; "
                        "with --eval val: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    p.add_argument("--quiet", action="store_true", help="no pretraining progress lines")
    return p


def sign_test_p(wins: int, n: int) -> float:
    """One-sided exact sign test: P(>= ``wins`` of ``n`` paired seeds won | no effect, ties counted as losses).

    The honest small-sample statement for "pretrained beats random": 5 of 5 gives 1/32 = 0.031, 3 of 3 only 0.125.
    """
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["layout"], r["labels"], r["epochs"], r["arm"]), []).append(r)
    out = []
    for (layout, labels, epochs, arm), rs in groups.items():
        entry: dict[str, Any] = {"layout": layout, "labels": labels, "epochs": epochs, "arm": arm, "n": len(rs)}
        for m in ("oa", "balanced_accuracy", "kappa"):
            v = np.array([r[m] for r in rs])
            entry[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                        "values": [round(float(x), 4) for x in v]}
        out.append(entry)
    # paired pretrained - random OA difference per seed
    for e in out:
        if not e["arm"].startswith("pretrained"):
            continue
        rnd = {r["seed"]: r["oa"] for r in rows if (r["layout"], r["labels"], r["epochs"], r["arm"]) ==
               (e["layout"], e["labels"], e["epochs"], "random")}
        pre = {r["seed"]: r["oa"] for r in rows if (r["layout"], r["labels"], r["epochs"], r["arm"]) ==
               (e["layout"], e["labels"], e["epochs"], e["arm"])}
        d = np.array([pre[s] - rnd[s] for s in sorted(pre) if s in rnd])
        if d.size:
            wins = int((d > 0).sum())
            e["oa_minus_random"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if d.size > 1 else 0.0,
                                    "wins": wins, "n": int(d.size), "sign_test_p": sign_test_p(wins, int(d.size))}
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'layout':<26}{'labels':>7}{'epochs':>7}  {'arm':<24}{'OA':>16}{'bal. acc.':>16}{'kappa':>16}"
             f"  {'OA - random (wins)':>20}"]
    for e in summary:
        cells = "".join(f"{e[m]['mean']:>10.3f} ± {e[m]['sd']:.3f}" for m in ("oa", "balanced_accuracy", "kappa"))
        diff = ""
        if "oa_minus_random" in e:
            d = e["oa_minus_random"]
            diff = f"  {d['mean']:+.3f} ± {d['sd']:.3f} ({d['wins']}/{d['n']}, sign p {d['sign_test_p']:.3f})"
        lines.append(f"{LAYOUT_NAMES.get(e['layout'], e['layout']):<26}{e['labels']:>7}{e['epochs']:>7}  "
                     f"{e['arm']:<24}{cells}{diff}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
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
    given = _given_backbone(args.backbone) if args.backbone else None
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
    summary = _summary(rows)
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


def combine(paths: list[Path]) -> dict[str, Any]:
    """One result from runs of the same protocol over disjoint seeds (what a single run would have written)."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        a = {k: v for k, v in first["protocol"].items() if k not in ("seeds", "pretrain_seeds")}
        b = {k: v for k, v in part["protocol"].items() if k not in ("seeds", "pretrain_seeds")}
        if a != b:
            raise SystemExit(f"error: --combine: {p} has another protocol than {paths[0]}: "
                             f"{sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))} differ")
    def seeds_of(part: dict[str, Any]) -> list[int]:  # a count (0..N-1) in files written before --first-seed
        given = part["protocol"]["seeds"]
        return list(range(given)) if isinstance(given, int) else list(given)

    seeds = [s for part in parts for s in seeds_of(part)]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --combine: seeds overlap ({sorted(seeds)})")
    rows = [r for part in parts for r in part["rows"]]
    pretraining = {k: v for part in parts for k, v in part["pretraining"].items()}
    return {**first, "command": " + ".join(part["command"] for part in parts),
            "protocol": {**first["protocol"], "seeds": sorted(seeds),
                         "pretrain_seeds": len({k.rsplit("/", 1)[-1] for k in pretraining if "/" in k})},
            "pretraining": pretraining,
            "wall_time_s": round(sum(part["wall_time_s"] for part in parts), 1),
            "combined_from": [str(p) for p in paths], "summary": _summary(rows), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    result = combine(args.combine) if args.combine else run(args)
    print(table(result["summary"]))
    pre = result["pretraining"]
    made = {k: v for k, v in pre.items() if "wall_time_s" in v}
    if made:
        print("pretraining wall time per backbone (from its card): " + ", ".join(
            f"{k} {v['wall_time_s']:.0f} s ({v['steps']} steps, {v['threads']} thread(s))" for k, v in made.items()))
    if "given" in pre:
        print(f"given backbone: {pre['given']['path']} (hash {pre['given']['checkpoint_hash']})")
    out = args.out if args.out is not None else (RESULTS if args.eval == "test" else None)
    if out is not None:
        print(f"wrote {write_result(out.stem, result, out.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
