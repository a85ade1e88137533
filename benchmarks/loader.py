"""Per-trial loader throughput (the streaming DataLoader) vs what the model consumes, CPU and GPU rates.

``python -m benchmarks.loader`` writes an HSI-Drive-shaped split (216 x 409 x 25 float32, HS3-Bench layout),
streams shuffled training batches from it through :class:`study.data.stream.SplitStream` with N loader
workers (each its own HDF5 handle), and compares images/s with the model's demand:

- CPU: a full-width RU-Net training step (forward + backward + AdamW) measured here, fp32;
- GPU: estimated from FLOPs (``torch.utils.flop_counter``, forward x 3 for a training step) at 40 % of an
  H100's dense bf16 peak (989 TFLOP/s).

Target: loader >= 3x demand. Reads come from the page cache (the file was just written).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

H100_BF16_DENSE = 989e12
MFU = 0.40


def loader_rate(split: object, workers: int, batch: int, seconds: float) -> float:
    """Images/s of shuffled batches streamed through a SplitStream with ``workers`` processes."""
    from study.data.stream import LoaderSettings, SplitStream

    stream = SplitStream(split, LoaderSettings(workers=workers, prefetch=4))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    n, images = len(split), 0  # type: ignore[arg-type]
    try:
        plan = [sorted(rng.choice(n, size=batch, replace=False).tolist()) for _ in range(1000)]
        it = stream.batches(plan)
        next(it)  # worker start-up is paid once per trial (persistent workers), not per epoch
        t0 = time.perf_counter()
        for x, _ in it:
            images += x.shape[0]
            if time.perf_counter() - t0 > seconds:
                break
        return images / (time.perf_counter() - t0)
    finally:
        stream.close()


def model_rates(n_bands: int, n_classes: int, hw: tuple[int, int], batch: int) -> dict[str, float]:
    """RU-Net (full width) training images/s measured on this CPU, and the FLOP-based GPU estimate."""
    from torch.utils.flop_counter import FlopCounterMode

    from study.models.runet import build_runet

    model = build_runet(n_bands, n_classes, width="full")
    x = torch.randn(batch, n_bands, *hw)
    y = torch.randint(0, n_classes, (batch, *hw))
    with FlopCounterMode(display=False) as fc:
        model(x[:1])
    flops_train = 3.0 * fc.get_total_flops()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    cpu = batch / min(times[1:])
    gpu = MFU * H100_BF16_DENSE / flops_train
    return {"gflop_per_train_image": flops_train / 1e9, "cpu_images_s": cpu, "gpu_images_s_est": gpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="0,1,2,4", help="loader worker counts (default 0,1,2,4)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="timing window per worker count")
    p.add_argument("--work", type=Path, default=Path("/tmp/hsistudy-loader"))
    args = p.parse_args(argv)

    from benchmarks.memory import SHAPE, write_dataset
    from study.data.bundle import split_ref
    from study.data.h5reader import H5Split
    from study.data.specs import get_spec

    spec = get_spec("hsidrive")
    data = write_dataset(args.work, 0.6)
    split = split_ref(H5Split(data / "hsidrive_train.h5", spec, check_values=False))
    torch.set_num_threads(1)  # a trial's compute thread; loader workers run beside it
    model = model_rates(spec.n_bands, spec.n_classes, SHAPE, batch=2)
    rows = []
    for w in (int(v) for v in args.workers.split(",")):
        rate = loader_rate(split, w, args.batch, args.seconds)
        rows.append({"workers": w, "loader_images_s": round(rate, 1),
                     "x_cpu_demand": round(rate / model["cpu_images_s"], 1),
                     "x_gpu_demand": round(rate / model["gpu_images_s_est"], 2)})
    best = max(r["loader_images_s"] for r in rows)
    out = {"image": [*SHAPE, spec.n_bands], "batch": args.batch, "model": {k: round(v, 2) for k, v in model.items()},
           "loaders": rows, "cpu_target_met": best >= 3 * model["cpu_images_s"],
           "gpu_target_met": best >= 3 * model["gpu_images_s_est"]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
