"""The model card written next to every pretrained checkpoint (``.card.json`` and ``.card.md``).

Why: a locally pretrained backbone is not the released HyperSL; its card says so
(:data:`~study.pretrain.config.STATEMENT`) and records the data, recipe, steps,
losses, machine and the checkpoint's sha256, so a result made with it can be traced.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from study.pretrain.config import PRETRAIN_VERSION, STATEMENT, PretrainConfig, settings_hash


def data_summary(config: PretrainConfig, pools: list[Any]) -> dict[str, Any]:
    """What the pretraining read: spectra per source, source files' hashes, the sensors' band layouts."""
    from study.data.pretrain_data import PERVIOUS_LEVEL2, earthlib_counts, sensor_fwhm
    from study.data.spectra import source_hashes

    counts = {p.source: int(p.spectra.shape[0]) for p in pools}
    hashes = source_hashes()  # of the registry files, whether read from them or from the bundle made of them
    tl, el = "tensorly/datasets/data/Indian_pines_corrected.npy", "earthlib/data/spectra.sli"
    sensors = {p.sensor: {"bands": int(p.wavelengths.size), "range_nm": [float(p.wavelengths[0]),
                          float(p.wavelengths[-1])], "srf_fwhm_nm": sensor_fwhm(p.sensor)} for p in pools}
    return {
        "indian_pines": {"spectra": counts.get("indian_pines", 0), "native_bands": 200,
                         "columns": list(config.ip_columns), "holdout": config.ip_holdout,
                         "file": tl, "sha256_16": hashes[tl],
                         "units": "at-sensor DN, min-max scaled per band over the scene"},
        "earthlib": {"spectra": counts.get("earthlib", 0), "level2": list(PERVIOUS_LEVEL2),
                     "classes": earthlib_counts(config.include_simulated),
                     "simulated_included": config.include_simulated,
                     "file": el, "sha256_16": hashes[el],
                     "units": "reflectance, min-max scaled per band over the library"},
        "sensors": sensors,
        "total_spectra": sum(counts.values()),
    }


def build_card(config: PretrainConfig, model: Any, pools: list[Any], n_sources: int, losses: list[float],
               out: Path, started: float, elapsed_before: float, resumed_at: int,
               device: torch.device) -> dict[str, Any]:
    """The card of the finished checkpoint ``out`` (``started``: ``perf_counter`` when this process began;
    ``elapsed_before``: seconds spent by earlier, resumed-from processes)."""
    from study.models.checkpoints import checkpoint_hash

    tail = max(1, len(losses) // 10)
    return {
        "kind": "hypersl-sanity-pretraining",
        "statement": STATEMENT,
        "size": config.size,
        "architecture": model.config.as_dict(),
        "settings": asdict(config),
        "settings_hash": settings_hash(config),
        "data": data_summary(config, pools),
        "steps": config.steps,
        "spectra_seen": config.steps * config.batch_size * n_sources,
        "initial_loss": losses[0],
        "final_loss": float(np.mean(losses[-tail:])),
        "final_loss_window": tail,
        "seed": config.seed,
        "checkpoint": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "checkpoint_hash": checkpoint_hash(out),
        "wall_time_s": round(elapsed_before + time.perf_counter() - started, 2),
        "resumed_at_step": resumed_at or None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": PRETRAIN_VERSION,
    }


def card_markdown(card: dict[str, Any]) -> str:
    """Human-readable model card."""
    d = card["data"]
    sensors = "; ".join(f"{k} {v['bands']} bands {v['range_nm'][0]:.0f}-{v['range_nm'][1]:.0f} nm "
                        f"(FWHM {v['srf_fwhm_nm']:g})" for k, v in d["sensors"].items())
    classes = ", ".join(f"{k} {v}" for k, v in d["earthlib"]["classes"].items())
    arch, st = card["architecture"], card["settings"]
    return (
        f"# HyperSL `{card['size']}` — sanity pretraining\n\n> {card['statement']}\n\n"
        f"- checkpoint: `{card['checkpoint']}` (sha256 `{card['sha256']}`; cache hash `{card['checkpoint_hash']}`)\n"
        f"- architecture: D={arch['dim']}, {arch['heads']} heads, encoder depth {arch['encoder_depth']}, "
        f"decoder depth {arch['decoder_depth']}\n"
        f"- steps: {card['steps']} x {card['settings']['batch_size']} spectra per source "
        f"({card['spectra_seen']:,} spectra seen), seed {card['seed']}\n"
        f"- loss (MSE + 1 - cosine, summed over sources): first step {card['initial_loss']:.4f}, "
        f"final {card['final_loss']:.4f} (mean of last {card['final_loss_window']} steps)\n"
        f"- wall time: {card['wall_time_s']:.0f} s on "
        f"{_where(card)}, torch {card['torch']}\n\n"
        f"## Data\n\n"
        f"- Indian Pines (tensorly): {d['indian_pines']['spectra']:,} pixels, columns "
        f"{d['indian_pines']['columns'][0]}-{d['indian_pines']['columns'][1] - 1}, {d['indian_pines']['units']}\n"
        f"- earthlib pervious: {d['earthlib']['spectra']:,} spectra ({classes}); {d['earthlib']['units']}\n"
        f"- Indian Pines pixels held out: {d['indian_pines'].get('holdout') or 'none'}\n"
        f"- resampled with Gaussian SRFs to: {sensors}; "
        f"{'random band subsets' if st.get('band_subsets', True) else 'full layouts'} per batch\n"
        f"- recipe: mask {st['mask_ratio']} (at least {st.get('min_visible', 0)} band tokens visible; masked bands "
        f"{'zeroed before' if st.get('mask_input') else 'only hidden after'} the stem), AdamW lr {st['lr']}, "
        f"cosine warm restarts T_0={st['t0']} T_mult={st['t_mult']} per step\n"
        + (f"- auxiliary loss: spectrum reconstructed from z alone, weight {st['z_recon']} (encoder mask ratio "
           f"{st.get('z_recon_mask', 0.0)})\n" if st.get("z_recon", 0.0) > 0 else "")
    )


def _where(card: dict[str, Any]) -> str:
    device = card.get("device", "cpu")
    return f"{card['threads']} CPU thread(s)" if device == "cpu" else device


def write_cards(checkpoint: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    """``<ckpt>.json`` and ``<ckpt>.md`` next to the checkpoint (atomic writes)."""
    from study.store import atomic_write_text

    base = checkpoint.with_suffix("")
    js = atomic_write_text(base.with_name(base.name + ".card.json"), json.dumps(card, indent=2) + "\n")
    md = atomic_write_text(base.with_name(base.name + ".card.md"), card_markdown(card))
    return js, md
