"""Training throughput and peak memory of the study's models at each dataset's real image size.

Why: the budget of a study (trials x epochs x images) is set by how many images
per second a trial trains; peak memory decides how many trials share a node or
GPU. Models: RU-Net (full width 64 and small 16) on raw bands, HyperSL-RU-Net
(the full RU-Net on 64 = ``cpu`` or 256 = ``small`` HyperSL feature channels)
and HyperSL-FC (BatchNorm1d + Linear, one AdamW step per 8,192-pixel sub-batch).

Freeze depth k > 0 rows: ``crossmodality`` (DINOv2 ViT-S, **random init**, which
costs the same as the released weights: pseudo-RGB bridge -> ViT -> linear head,
k = 0 frozen and k = 4 last blocks trainable, at the real image size) and
HyperSL-FC / HyperSL-RU-Net at k = 1 (the per-pixel HyperSL transformer, random
init, runs inside the training step: ``study.models.hypersl_partial``). A k = 1 step is
one FC sub-batch of 8,192 pixels, or one random ``CROP``² crop per image for the
RU-Net (the trainables' defaults); on CPU in ``--quick`` mode the pixel count is
shrunk (from a 64-pixel calibration step) so that one step takes about
``K1_TARGET_S`` seconds, which leaves pixels/s unchanged (the per-pixel
transformer is linear in the pixel count). ``slowdown_vs_k0`` = pixels/s of the
k = 0 row of the same model and dataset / pixels/s of the row.

One optimizer step = forward + backward + AdamW on one batch (CPU: batch 1; GPU:
the dataset's HS3-Bench batch size under bf16 autocast). A configuration whose
estimated time exceeds the per-configuration cap is skipped and says so, with
the estimate from its counted conv FLOPs and the rate measured just before.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import (
    cuda_available,
    finish,
    machine_info,
    print_table,
    standard_main,
    target,
)

# re-exported (`x as x`): the rows and the timed steps live in their own modules, callers import them from here
from benchmarks.throughput_rows import DATASETS as DATASETS
from benchmarks.throughput_rows import K0_OF as K0_OF
from benchmarks.throughput_rows import K1_MODELS as K1_MODELS
from benchmarks.throughput_rows import MODELS as MODELS
from benchmarks.throughput_rows import VIT_MODELS as VIT_MODELS
from benchmarks.throughput_rows import add_slowdowns as add_slowdowns
from benchmarks.throughput_rows import measure as measure
from benchmarks.throughput_rows import measure_k1 as measure_k1
from benchmarks.throughput_rows import measure_vit as measure_vit
from benchmarks.throughput_steps import K1_PROBE as K1_PROBE
from benchmarks.throughput_steps import K1_TARGET_S as K1_TARGET_S
from benchmarks.throughput_steps import SUB_BATCH as SUB_BATCH
from benchmarks.throughput_steps import conv_flops_per_pixel as conv_flops_per_pixel
from benchmarks.throughput_steps import k1_steps as k1_steps
from benchmarks.throughput_steps import pixel_fc_steps as pixel_fc_steps
from benchmarks.throughput_steps import runet_steps as runet_steps
from benchmarks.throughput_steps import vit_flops as vit_flops
from benchmarks.throughput_steps import vit_steps as vit_steps


def run(quick: bool, save: bool = True) -> dict[str, Any]:
    started, info = time.perf_counter(), machine_info()
    device = "cuda" if cuda_available() else "cpu"
    rows = measure(quick, device)
    cols = ["model", "dataset", "image", "batch", "dtype", "s_per_step", "images_s", "pixels_s", "slowdown_vs_k0",
            "gflop_per_step", "gflop_s", "rss_before_mb", "peak_rss_mb", "peak_cuda_mb", "note"]
    print_table(f"training throughput on {device} ({info['device']}, {info['torch_threads']} threads)", rows, cols)
    if device == "cpu":
        print("\n== GPU section (bf16 autocast, HS3-Bench batch sizes): skipped: no GPU")
    measured = [r for r in rows if r.get("pixels_s")]
    targets = [target(f"training throughput + peak memory on {device}", f"{len(measured)} of {len(rows)} "
                      "configurations measured", "report", None,
                      "" if len(measured) == len(rows) else "the rest skipped with their time estimates")]
    if device == "cpu":
        targets.append(target("training throughput on GPU (bf16 autocast)", "-", "report on a GPU", None,
                              "not measurable here: no GPU"))
    return finish("throughput", {"quick": quick, "device": device, "rows": rows, "targets": targets},
                  save, started, info)


def main(argv: list[str] | None = None) -> int:
    return standard_main("throughput", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
