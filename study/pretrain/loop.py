"""The masked spectral modelling loop, with resume points so that a long run survives interruption.

One step = one batch per source (each on a random sensor layout and band subset),
losses summed as HyperSL sums its two sensors. The training state (weights,
AdamW, scheduler, both RNG streams, losses) goes atomically to a resume file
every few steps; continuing from it gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study.errors import HsiStudyError
from study.pretrain.cards import build_card, write_cards
from study.pretrain.config import PretrainConfig, effective_mask_ratio, settings_hash


def resolve_device(name: str = "cpu") -> torch.device:
    """``cpu``, ``cuda``/``cuda:N`` or ``auto`` (a GPU when torch sees one) as a torch device; clear error if absent.

    Why a setting rather than always "the best device": the embedded default backbone
    is made on CPU so that its numbers are the same on every laptop and CI runner;
    a GPU is for the longer runs of the paper's sizes (``--size small --steps ...``).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise HsiStudyError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HsiStudyError(f"--device {name}: torch {torch.__version__} sees no CUDA device (use --device cpu)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise HsiStudyError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise HsiStudyError(f"--device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


class PretrainStopped(Exception):
    """A pretraining stopped early on request (``time_limit``/``stop_after``); its state is saved to resume."""

    def __init__(self, step: int, steps: int, state: Path) -> None:
        super().__init__(f"pretraining stopped at step {step}/{steps}; its state is in {state}: run the same "
                         "command again to continue from there")
        self.step, self.steps, self.state = step, steps, state


def resume_path(out: str | Path) -> Path:
    """Where a pretraining writing ``out`` keeps its training state until it finishes."""
    out = Path(out)
    return out.with_name(out.name + ".resume.pt")


def default_save_every(steps: int) -> int:
    """Resume points per run: about 20, at least 50 steps apart (a state file costs ~4x the weights to write)."""
    return max(50, math.ceil(steps / 20))


def z_only_reconstruction(model: Any, x: torch.Tensor, wavelengths: torch.Tensor,
                          config: PretrainConfig) -> torch.Tensor:
    """The ``z_recon`` auxiliary pass: encode (mask ratio ``z_recon_mask``) and decode the spectrum from z alone."""
    h, pe, _ = model.tokens(x, wavelengths, config.z_recon_mask, config.mask_input and config.z_recon_mask > 0)
    return model.decode_from_feature(model.aggregate(model.run_blocks(h)[0]), pe)


def pretrain(config: PretrainConfig, out: str | Path, progress: bool = True, device: str = "cpu",
             save_every: int | None = None, time_limit: float | None = None,
             stop_after: int | None = None) -> dict[str, Any]:
    """Run the masked spectral modelling and write the checkpoint + ``.json``/``.md`` cards next to it.

    Returns the card. ``device`` (see :func:`resolve_device`) is where the model
    trains; it is not part of the settings (the same recipe), but the card records it.

    Long runs survive interruption: every ``save_every`` steps (default
    :func:`default_save_every`; 0 = never) the whole training state goes to
    :func:`resume_path`, and a later call with the same settings continues from it,
    giving the same weights as an uninterrupted run. ``time_limit`` (seconds)
    or ``stop_after`` (steps) save that state and raise :class:`PretrainStopped`,
    e.g. to fit a run into a scheduler's or a lent GPU's time slots.
    """
    config.validate()
    dev = resolve_device(device)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    every = default_save_every(config.steps) if save_every is None else save_every
    with torch.random.fork_rng(devices=cuda):  # seed locally: a caller's (Ray worker's) RNG stream is left alone
        torch.manual_seed(config.seed)
        return _pretrain(config, Path(out), progress, dev, every, time_limit, stop_after)


def _save_state(path: Path, step: int, model: Any, opt: Any, sched: Any, rng: np.random.Generator,
                losses: list[float], elapsed: float, config: PretrainConfig, device: torch.device) -> None:
    from study.store import atomic_write_bytes

    state: dict[str, Any] = {
        "settings_hash": settings_hash(config), "step": step, "elapsed_s": elapsed,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(rng.bit_generator.state),
        "losses": torch.tensor(losses, dtype=torch.float64),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, config: PretrainConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - bad bytes raise many types; the message names the file and the fix
        raise HsiStudyError(f"{path}: unreadable pretraining state ({type(exc).__name__}: {exc}); delete it (or "
                            "pass --force) to start over") from None
    found = state.get("settings_hash") if isinstance(state, dict) else None
    if found != settings_hash(config):
        raise HsiStudyError(f"{path}: a pretraining state for other settings (hash {found!r}, "
                            f"these are {settings_hash(config)!r}); use the same settings to continue it, or "
                            "delete it (or pass --force) to start over")
    return state


def _pretrain(config: PretrainConfig, out: Path, progress: bool, device: torch.device, save_every: int,
              time_limit: float | None, stop_after: int | None) -> dict[str, Any]:
    from study.data.pretrain_data import build_pools, sample_batch
    from study.models.checkpoints import save_checkpoint
    from study.models.hypersl import build_hypersl, masked_modelling_loss

    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    pools = [p for p in build_pools(sensors=config.sensors, include_simulated=config.include_simulated,
                                    ip_columns=config.ip_columns, ip_holdout=config.ip_holdout)
             if p.source in config.sources]
    by_source: dict[str, list[Any]] = {}
    for p in pools:
        by_source.setdefault(p.source, []).append(p)
    model = build_hypersl(config.size).train().to(device)  # built on CPU first: the same init on every device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay, eps=config.eps)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=config.t0, T_mult=config.t_mult)
    losses: list[float] = []
    start, elapsed_before, state_path = 0, 0.0, resume_path(out)
    if state_path.is_file():
        state = _load_state(state_path, config)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start, elapsed_before, losses = int(state["step"]), float(state["elapsed_s"]), state["losses"].tolist()
        if progress:
            print(f"[hsistudy] pretrain {config.size}: resuming at step {start}/{config.steps} from {state_path}",
                  file=sys.stderr, flush=True)
    last_report = time.perf_counter()
    for step in range(start + 1, config.steps + 1):
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for source_pools in by_source.values():
            pool = source_pools[int(rng.integers(len(source_pools)))]
            x, wl = sample_batch(pool, config.batch_size, rng, config.min_bands, config.band_subsets)
            xt = torch.from_numpy(x).to(device)
            wt = torch.from_numpy(wl).to(device)
            _, recon = model(xt, wt, effective_mask_ratio(config, wl.size), config.mask_input)
            total = total + masked_modelling_loss(recon, xt)
            if config.z_recon > 0:
                total = total + config.z_recon * masked_modelling_loss(z_only_reconstruction(model, xt, wt, config), xt)
        if not torch.isfinite(total):
            raise HsiStudyError(f"pretraining diverged at step {step} (loss {total.item()}); try a lower --lr")
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(total.detach()))
        now = time.perf_counter()
        stop = step < config.steps and ((stop_after is not None and step >= stop_after)
                                        or (time_limit is not None and now - t0 >= time_limit))
        if stop or (save_every > 0 and step % save_every == 0 and step < config.steps):
            _save_state(state_path, step, model, opt, sched, rng, losses, elapsed_before + now - t0, config, device)
        if stop:
            raise PretrainStopped(step, config.steps, state_path)
        if progress and (now - last_report > 10.0 or step == config.steps):
            last_report = now
            eta = (now - t0) / (step - start) * (config.steps - step)
            print(f"[hsistudy] pretrain {config.size}: step {step}/{config.steps} loss {np.mean(losses[-20:]):.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e} ({now - t0:.0f} s, ETA {eta:.0f} s)", file=sys.stderr, flush=True)
    save_checkpoint(model.cpu(), out, epoch=1, optimizer=opt, scheduler=sched)  # loads on machines without a GPU
    card = build_card(config, model, pools, len(by_source), losses, out, t0, elapsed_before, start, device)
    write_cards(out, card)
    state_path.unlink(missing_ok=True)  # finished: the checkpoint and its cards are the record now
    return card
