"""``--features cache|compute|auto``: the cost model's numbers for HyKo2, HSI-Drive and HCV2 at real size.

The model (``study.features.cost``) compares, per epoch (all training images + the validation split):
reading cached features, ``pixels x D x 2 B`` (float16, the default) at a read rate, against reading the raw
spectra (``pixels x bands x 4 B``, float32 cubes) plus HyperSL's forward FLOPs per pixel at a FLOP rate.

- **this CPU, measured** (1 torch thread, as a CPU trial): the forward of the compute path itself
  (``PartialHyperSL`` at k = 0 with chunk statistics) on one chunk of random spectra per band count, and the
  read rate of a cached feature file (HyKo2-sized float16 feature images written in the cache's layout, read
  back through the trials' reader ``H5Split.read``, h5py + float16 -> float32, from the page cache);
- **an H100, estimated**: 40 % of its dense IEEE-fp32 peak (67 TFLOP/s: what the compute path runs in, and what
  ``auto`` uses), and for comparison 40 % of the dense bf16 peak (989 TFLOP/s, the convention of
  docs/performance.md §8); reads at ``study.features.READ_BYTES_PER_S`` (a local NVMe disk).

Two backbones: ``small`` (D = 256, 8 layers: the released HyperSL's size) and ``cpu`` (D = 64, 3 layers: the
default locally pretrained sanity backbone). FLOPs per pixel: ``torch.utils.flop_counter`` on the export's forward.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from benchmarks._common import finish, machine_info, print_table, standard_main, target

#: dataset -> (training + validation images, H, W) of the real data (docs/reference.md §R1, §R3: HyKo2 81 + 32,
#: HSI-Drive 451 + 150, HCV2 949 + 105 of the cross-domain split at the x0.5 size)
REAL: dict[str, tuple[int, int, int]] = {"hyko2": (113, 254, 510), "hsidrive": (601, 216, 409),
                                         "hcv2": (1054, 711, 944)}
#: pixels per measured forward (backbone size, bands) -> chunk; quick mode takes a quarter
CHUNKS: dict[tuple[str, int], int] = {("cpu", 15): 4000, ("cpu", 25): 2000, ("cpu", 128): 500,
                                      ("small", 15): 400, ("small", 25): 256, ("small", 128): 64}
H100 = "NVIDIA H100 80GB HBM3"


def forward_rate(size: str, bands: int, pixels: int) -> dict[str, float]:
    """Pixels/s and FLOP/s of the compute path's k = 0 forward (chunk-mode statistics) on this CPU."""
    from study.data.specs import get_spec
    from study.features import forward_flops
    from study.models.hypersl import build_hypersl
    from study.models.hypersl_partial import PartialHyperSL

    name = next(n for n in REAL if get_spec(n).n_bands == bands)
    wl = get_spec(name).wavelength_array()
    torch.manual_seed(0)
    model = build_hypersl(size)
    flops = forward_flops(model, wl)
    backbone = PartialHyperSL(model, 0, wl, "chunk")
    x = torch.rand(pixels, bands) * 3000 + 500  # raw counts, as the export sees them
    backbone.set_sources([x.reshape(1, pixels, 1, bands).numpy()], pixels)  # one image, one chunk: its statistics
    backbone.refresh_stats()
    ids = torch.zeros(pixels, dtype=torch.long)
    with torch.inference_mode():
        backbone(x[:32], ids[:32])  # warm-up
        t0 = time.perf_counter()
        backbone(x, ids)
        dt = time.perf_counter() - t0
    return {"px_per_s": pixels / dt, "flops_per_px": flops, "flop_rate": pixels * flops / dt}


def read_rate(workdir: Path, images: int, dim: int = 256) -> float:
    """Bytes/s of reading a cached float16 feature file of HyKo2-sized images through ``H5Split.read``."""
    from study.data.h5reader import H5Split
    from study.data.specs import get_spec

    spec = get_spec("hyko2")
    _, h, w = REAL["hyko2"]
    path = workdir / "hyko2_train.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as fh:  # the feature cache's layout (study.features.export)
        for i in range(images):
            g = fh.create_group(f"s{i:04d}")
            g.create_dataset("image", data=rng.standard_normal((h, w, dim), dtype=np.float32).astype(np.float16))
            g.create_dataset("labels", data=rng.integers(0, spec.n_classes, (h, w)).astype(np.uint8))
        fh.attrs.update({"feature_dim": dim, "source_wavelengths": spec.wavelength_array(), "complete": True})
    split = H5Split(path, spec, check_values=False)
    split.read(split.names[0])  # page cache and handle warm, as in a trial's later epochs
    t0 = time.perf_counter()
    for name in split.names:
        split.read(name)
    return images * h * w * dim * 2 / (time.perf_counter() - t0)


def model_rows(rates: dict[tuple[str, int], dict[str, float]], cpu_read: float) -> list[dict[str, Any]]:
    """The cost model per (dataset, backbone, device): seconds per epoch read vs computed, and its choice."""
    from study.data.specs import get_spec
    from study.features import FLOP_SHARE, READ_BYTES_PER_S, FeatureCost, flop_rate, gpu_peaks

    rows = []
    for name, (images, h, w) in REAL.items():
        bands, pixels = get_spec(name).n_bands, images * h * w
        for size, dim in (("small", 256), ("cpu", 64)):
            r = rates[(size, bands)]
            devices = (("H100 est. (fp32 40 %)", H100, flop_rate(H100), READ_BYTES_PER_S),
                       ("H100 est. (bf16 40 %)", H100, FLOP_SHARE * gpu_peaks(H100)[2], READ_BYTES_PER_S),
                       ("this CPU, measured", "cpu", r["flop_rate"], cpu_read))
            for label, device, rate, read in devices:
                cost = FeatureCost(pixels, dim * 2, bands * 4, r["flops_per_px"], device, rate, read)
                rows.append({"dataset": name, "backbone": size, "device": label, "Mpx/epoch": pixels / 1e6,
                             "GFLOP/px": r["flops_per_px"] / 1e9, "TFLOP/s": rate / 1e12, "GB/s": read / 1e9,
                             "cache GB": pixels * dim * 2 / 1e9, "cache s": cost.cache_s,
                             "compute s": cost.compute_s, "ratio": cost.compute_s / cost.cache_s,
                             "auto": cost.cheaper})
    return rows


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    scale = 4 if quick else 1
    rates = {k: forward_rate(k[0], k[1], max(32, v // scale)) for k, v in CHUNKS.items()}
    with tempfile.TemporaryDirectory(prefix="bench-features-") as d:
        cpu_read = read_rate(Path(d), 2 if quick else 6)
    print_table("HyperSL k = 0 forward on this CPU (1 thread, PartialHyperSL, chunk statistics)",
                [{"backbone": k[0], "bands": k[1], "px/s": v["px_per_s"], "GFLOP/px": v["flops_per_px"] / 1e9,
                  "GFLOP/s": v["flop_rate"] / 1e9} for k, v in rates.items()],
                ["backbone", "bands", "px/s", "GFLOP/px", "GFLOP/s"])
    print(f"\ncached feature file read through H5Split.read (float16 -> float32, page cache): "
          f"{cpu_read / 1e9:.2f} GB/s")
    rows = model_rows(rates, cpu_read)
    print_table("cost model per epoch (train + val at real size; float16 features, float32 raw cubes)", rows,
                ["dataset", "backbone", "device", "Mpx/epoch", "GFLOP/px", "TFLOP/s", "GB/s", "cache GB", "cache s",
                 "compute s", "ratio", "auto"])
    on_cpu = [r["auto"] for r in rows if r["device"].startswith("this CPU")]
    t = target("--features auto on this CPU", ", ".join(sorted(set(on_cpu))), "cache (today's behaviour)",
               set(on_cpu) == {"cache"})
    payload = {"quick": quick, "forward": {f"{k[0]}/{k[1]}": v for k, v in rates.items()},
               "read_bytes_per_s": cpu_read, "model": rows, "targets": [t]}
    return finish("features_mode", payload, save, started, info)


def main(argv: list[str] | None = None) -> int:
    return standard_main("features_mode", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
