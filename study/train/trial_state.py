"""What a trial keeps in its Tune checkpoint and how it picks up from one.

A Ray restart (node loss, failure retry, restore) resumes from the last checkpoint as if the trial had
never stopped: model and optimizer state, the best-so-far and its weights, the device time spent, and
its random generators (numpy's, torch's CPU one and, when the trial uses CUDA, every CUDA device's: RU-Net's
dropout draws there). ``loop.fit`` writes :func:`checkpoint_state` and reads it back with :func:`resume`.

On a CPU the resumed trial equals the uninterrupted one bit for bit. On a GPU it draws the same random
numbers, but cuDNN's autotuner (``cudnn.benchmark``, on for fixed image sizes) picks kernels per process and
some kernels accumulate with atomics (conv weight gradients, bilinear upsampling's backward), so the two
runs agree to float noise that training can grow: the tolerance is in docs/design.md §7.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

CKPT_FILE = "state.pt"


def save_trial_checkpoint(report: Callable[..., Any], metrics: dict, state: dict) -> None:
    """Report with a Tune checkpoint (the state dict saved as ``state.pt`` in a temp dir)."""
    from ray import tune  # local: trainables are also called as plain functions in tests

    with tempfile.TemporaryDirectory() as d:
        torch.save(state, os.path.join(d, CKPT_FILE))
        report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state a trial can change: trainable parameters and all buffers (CPU copies).

    Frozen parameters are left out: the trainable rebuilds them identically from
    its weights file or cached backbone before it restores a checkpoint, and a
    frozen ViT-S is ~88 MB per copy (checkpoint + best state, every epoch).
    """
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in frozen}


def load_mutable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`mutable_state`: strict about everything except the frozen parameters it left out."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - frozen)[:8]}, "
                           f"unexpected {sorted(unexpected)[:8]}")


def load_trial_checkpoint(get_checkpoint: Callable[[], Any] | None) -> dict | None:
    """The state dict of the trial's last Tune checkpoint, or None when it starts afresh."""
    ckpt = get_checkpoint() if get_checkpoint else None
    if ckpt is None:
        return None
    with ckpt.as_directory() as d, open(os.path.join(d, CKPT_FILE), "rb") as fh:
        return torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=True)


@dataclass
class Progress:
    """What a run carries from epoch to epoch and across a restart: where it starts, the best so far, device time."""

    start_epoch: int = 1
    best: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None
    device_s: float = 0.0

    def record(self, epoch: int, miou: float, model: nn.Module) -> None:
        """Keep ``model``'s state when this epoch's validation mIoU beats the best (the checkpoint selection)."""
        if miou > self.best:  # nan never wins: a trial with no valid val pixels keeps best = -1
            self.best, self.best_epoch = miou, epoch
            self.best_state = mutable_state(model)


def resume(get_checkpoint: Callable[[], Any] | None, model: nn.Module, opt: torch.optim.Optimizer,
           gen: np.random.Generator) -> Progress:
    """Restore model, optimizer and both RNGs from the last checkpoint, so a restarted trial goes on unchanged."""
    state = load_trial_checkpoint(get_checkpoint)
    if state is None:
        return Progress()
    # resume a trial that Ray restarted (node loss, failure retry, restore)
    load_mutable_state(model, state["model"])
    opt.load_state_dict(state["optimizer"])
    progress = Progress(start_epoch=state["epoch"] + 1, best=state["best_miou"], best_epoch=state["best_epoch"],
                        best_state=state["best_state"], device_s=state["device_s"])
    gen.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
    cuda_rng = state.get("cuda_rng")
    if cuda_rng is not None and torch.cuda.is_initialized():  # a CUDA trial (the model is already on its device)
        torch.cuda.set_rng_state_all(list(cuda_rng)[: torch.cuda.device_count()])
    return progress


def checkpoint_state(epoch: int, model: nn.Module, opt: torch.optim.Optimizer, progress: Progress,
                     gen: np.random.Generator) -> dict:
    """Everything :func:`resume` needs to go on after ``epoch`` as if the trial had never stopped."""
    return {
        "epoch": epoch,
        "model": mutable_state(model),
        "optimizer": opt.state_dict(),
        "best_state": progress.best_state,
        "best_miou": progress.best,
        "best_epoch": progress.best_epoch,
        "device_s": progress.device_s,
        "np_rng": gen.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        # CUDA's generators only where this trial uses CUDA (a CPU trial on a GPU node never initialises it)
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
