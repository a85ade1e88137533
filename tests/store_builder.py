"""A constructed result store with known values, shared by the analysis, report and browser tests.

Two strategies x three fractions x three seeds on "hyko2". The numbers are
chosen so every statistic has a hand-computable answer:

- indomain test mIoU per seed: 0.1 -> .20/.22/.24, 0.5 -> .35/.37/.39, 1.0 -> .50/.52/.54
- crossdomain = indomain + DIFFS (paired by seed, same subset hash):
  0.1 -> +.10/+.12/+.14 (all positive: exact sign-flip p = 2/8 = 0.25)
  0.5 -> +.18 each      (p = 0.25; mean .55 >= indomain's 100 % mean .52 -> label savings at 50 %)
  1.0 -> +.03/-.01/+.01 (|sum| is reached by 6 of 8 sign patterns: p = 0.75)
- 4 tuning trials per cell, max 10 epochs, run for 10/10/3/3 epochs (2 stopped early):
  26 of 40 trial-epochs, 35 % saved; 2 device-seconds per epoch, 30 per final run.
  indomain runs on "cpu", crossdomain on "cuda:0" (so GPU-hours count only crossdomain).
- every cell starts at T0 and runs its trials, then its finals, one after the other; each run takes
  STARTUP_S longer on the driver clock (started_at/ended_at) than its training loop (wall_s).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

from study.store import write_rows, write_study_file

FRACTIONS = (0.1, 0.5, 1.0)
IMAGES = {0.1: 4, 0.5: 20, 1.0: 40}
SEEDS = (0, 1, 2)
INDOMAIN = {0.1: (0.20, 0.22, 0.24), 0.5: (0.35, 0.37, 0.39), 1.0: (0.50, 0.52, 0.54)}
DIFFS = {0.1: (0.10, 0.12, 0.14), 0.5: (0.18, 0.18, 0.18), 1.0: (0.03, -0.01, 0.01)}
TRIAL_EPOCHS = (10, 10, 3, 3)
MAX_EPOCHS = 10
DEVICE_S_PER_EPOCH = 2.0
FINAL_DEVICE_S = 30.0
DEVICE = {"indomain": "cpu", "crossdomain": "cuda:0"}
STARTUP_S = 2.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_CLASSES = 11  # hyko2: class 0 is the ignore slot


def expected_miou(strategy: str, fraction: float, seed_index: int) -> float:
    base = INDOMAIN[fraction][seed_index]
    return base + DIFFS[fraction][seed_index] if strategy == "crossdomain" else base


def _per_class(miou: float) -> list[float]:
    """Ignore slot and class 9 (absent from test) are NaN; the rest spread around the mIoU."""
    return [math.nan] + [min(1.0, miou * (0.6 + 0.1 * k)) for k in range(1, 9)] + [math.nan, min(1.0, 1.5 * miou)]


def _base(strategy: str, fraction: float, key: str | None = None) -> dict:
    subset = f"subset{int(fraction * 100):03d}"
    cell = f"{strategy}-f{fraction:g}-{subset[:8]}-{key}" if key else f"{strategy}-f{fraction}"
    return dict(study_id="constructed", dataset="hyko2", strategy=strategy, train_fraction=fraction,
                n_train_images=IMAGES[fraction], subset_hash=subset, subset_seed=0,
                cell_id=cell, device=DEVICE[strategy], data_source="synthetic:hyko2-constructed",
                code_version="0.1.0-test", model_name=f"{strategy}-net", max_epochs=MAX_EPOCHS)


def _cell_rows(strategy: str, fraction: float, seeds: tuple[int, ...], key: str | None = None) -> list[dict]:
    rows: list[dict] = []
    base = _base(strategy, fraction, key)
    clock = [T0]

    def span(wall_s: float) -> dict:
        start = clock[0]
        clock[0] = start + timedelta(seconds=wall_s + STARTUP_S)
        return {"started_at": start, "ended_at": clock[0]}

    for t, epochs in enumerate(TRIAL_EPOCHS):
        trial_id = f"{base['cell_id']}-tune-{t}"
        hp = dict(lr=10 ** (-4 + t * 0.5), weight_decay=10 ** (-5 + t), dropout=0.1 * t, batch_size=4)
        curve = [0.05 + 0.04 * e * (1.0 - 0.2 * t) for e in range(1, epochs + 1)]
        for e, v in enumerate(curve, start=1):
            rows.append({**base, **hp, "row_kind": "epoch", "phase": "tune", "trial_id": trial_id, "seed": 0,
                         "status": "ok", "epoch": e, "epochs_run": e, "val_miou": v,
                         "device_s": DEVICE_S_PER_EPOCH * e, "wall_s": DEVICE_S_PER_EPOCH * e + 0.5})
        rows.append({**base, **hp, "row_kind": "trial", "phase": "tune", "trial_id": trial_id, "seed": 0,
                     "status": "completed" if epochs == MAX_EPOCHS else "stopped_early",
                     "epoch": epochs, "epochs_run": epochs, "val_miou": max(curve),
                     "device_s": DEVICE_S_PER_EPOCH * epochs, "wall_s": DEVICE_S_PER_EPOCH * epochs + 0.5,
                     **span(DEVICE_S_PER_EPOCH * epochs + 0.5)})
    for i, seed in enumerate(seeds):
        m = expected_miou(strategy, fraction, i)
        rows.append({**base, "row_kind": "final", "phase": "final", "trial_id": f"{base['cell_id']}-final-{seed}",
                     "seed": seed, "status": "completed", "epoch": 8, "epochs_run": MAX_EPOCHS, "lr": 1e-4,
                     "val_miou": m - 0.02, "test_miou": m, "test_oa": m + 0.3, "test_macc": m + 0.1,
                     "test_macro_f1": m + 0.05, "test_iou_per_class": _per_class(m),
                     "device_s": FINAL_DEVICE_S, "wall_s": FINAL_DEVICE_S + 1.0, **span(FINAL_DEVICE_S + 1.0)})
    return rows


def build_store(root: Path, strategies: tuple[str, ...] = ("indomain", "crossdomain"),
                seeds: tuple[int, ...] = SEEDS, cell_key: str | None = None) -> Path:
    """Write the constructed store (one Parquet part per cell) and its study.json into ``root``; ``cell_key``:
    cell ids of the real shape ``S-f0.5-<subset>-<cell_key>`` (two keys: cells of two search spaces)."""
    write_study_file(root, {"study_id": "constructed", "settings": {"dataset": "hyko2", "seeds": len(seeds)}})
    for s in strategies:
        for f in FRACTIONS:
            write_rows(root, _cell_rows(s, f, seeds, cell_key), part_name=f"{s}-f{f}{cell_key or ''}")
    return root
