"""HyperSL-FC heads on frozen features (docs/reference.md §R16) and the scores they are judged by.

:func:`train_head` is the fixed-epochs protocol; :func:`train_heads_es` the paper's
early-stopped one, with the arms' heads stacked in one :class:`BatchedFC`.
"""

from __future__ import annotations

import numpy as np
import torch


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
    """Class predictions of one head (eval mode) for the rows of ``x``."""
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
