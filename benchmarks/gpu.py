"""``python -m benchmarks.gpu``: the GPU check of issue 13, <= 5 minutes on one GPU, one JSON on stdout.

Why one command: a GPU is lent rarely and briefly; this measures everything the
GPU path promises in one short run, each part in its own try/except so one
failure still leaves the others' figures:

- ``strategies``: per strategy at each dataset's real image size and HS3-Bench
  batch size, bf16 autocast and fp32: step time, images/s, peak CUDA memory and
  the GPU busy fraction (CUDA kernel time / wall time, from the profiler);
- ``loader``: per dataset shape (real sizes; HCV2 as PCA scores) and data placement (stream, memory,
  device: ``benchmarks.loader``) images/s delivered, disk and host->device bytes per epoch, against the
  RU-Net's demand;
- ``export``: the HyperSL ``small`` export (``study.features.export.export_image``, HCV2
  spectra, chunk 5,000) in pixels/s and % of the GPU's dense bf16 peak;
- ``smoke_study``: a two-trial ``study.run --smoke --gpus on`` end to end.

Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import REPO_ROOT, cuda_available, machine_info, write_result

#: strategy -> (model kind, input channels: None = the dataset's bands, else HyperSL feature width)
STRATEGIES: dict[str, tuple[str, int | None]] = {
    "indomain": ("runet", None), "crossdomain": ("runet", 256), "crossdomain-fc": ("fc", 256),
    "indomain-fc": ("fc", None), "crossmodality": ("vit", None),
}
DATASETS = ("hyko2", "hsidrive", "hcv2")
#: seconds each part may use (the whole run stays under 5 minutes)
BUDGET_S = {"strategies": 120.0, "loader": 45.0, "export": 40.0, "smoke_study": 150.0}
HCV2_SHAPE = (711, 944, 128)
SUB_BATCH = 8192


def _case(strategy: str, dataset: str) -> tuple[Any, Any, Any, int]:
    """(model, x, y, images per step) on the GPU at the dataset's real size and HS3-Bench batch size."""
    import torch

    from study.data.specs import get_spec

    spec = get_spec(dataset)
    (h, w), kind_ch = spec.image_size, STRATEGIES[strategy]
    kind, ch = kind_ch[0], kind_ch[1] or spec.n_bands
    torch.manual_seed(0)
    if kind == "fc":  # one image's pixels, stepped in 8,192-pixel sub-batches (a step = one image)
        from study.models.heads import PixelFC

        model = PixelFC(ch, spec.n_classes)
        x, y = torch.randn(h * w, ch), torch.randint(0, spec.n_classes, (h * w,))
        return model.cuda(), x.cuda(), y.cuda(), 1
    b = spec.batch_size
    if kind == "runet":
        from study.models.runet import build_runet

        model = build_runet(ch, spec.n_classes, width="full")
    else:
        from study.models.freezing import set_trainable_depth
        from study.models.rgb_bridge import PseudoRGB, choose_bands
        from study.models.vit import build_vit
        from study.models.vit_seg import LinearHead, ViTSegmenter

        vit = build_vit("small")
        set_trainable_depth(vit, 0)  # k = 0: frozen ViT (random init costs what the released weights cost)
        model = ViTSegmenter(PseudoRGB(choose_bands(spec), torch.ones(3), torch.zeros(3)), vit,
                             LinearHead(vit.cfg.dim, spec.n_classes))
    x, y = torch.randn(b, ch, h, w), torch.randint(0, spec.n_classes, (b, h, w))
    return model.cuda(), x.cuda(), y.cuda(), b


def _step_fn(model: Any, x: Any, y: Any, bf16: bool) -> Callable[[], None]:
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    fc = x.ndim == 2

    def one(xb: Any, yb: Any) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(xb)
        loss = torch.nn.functional.cross_entropy(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step() -> None:
        if fc:
            for s in range(0, len(y), SUB_BATCH):
                one(x[s : s + SUB_BATCH], y[s : s + SUB_BATCH])
        else:
            one(x, y)

    return step


def busy_fraction(step: Callable[[], None], steps: int = 2) -> float | None:
    """CUDA kernel time / wall time over ``steps`` steps (torch profiler); None where CUPTI is unavailable."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    except Exception:  # noqa: BLE001 - a profiler problem must not lose the step times
        return None
    return round(min(1.0, kernel_us / 1e6 / wall), 3)


def measure_strategies(budget_s: float) -> list[dict[str, Any]]:
    import torch

    torch.backends.cudnn.benchmark = True
    rows, t_start = [], time.perf_counter()
    for dataset in DATASETS:
        for strategy in STRATEGIES:
            for precision in ("bf16", "fp32"):
                row: dict[str, Any] = {"strategy": strategy, "dataset": dataset, "precision": precision}
                rows.append(row)
                if time.perf_counter() - t_start > budget_s:
                    row["skipped"] = f"time budget of {budget_s:.0f} s spent"
                    continue
                try:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    model, x, y, images = _case(strategy, dataset)
                    step = _step_fn(model, x, y, precision == "bf16")
                    for _ in range(2):
                        step()
                    torch.cuda.synchronize()
                    t0, n = time.perf_counter(), 3
                    for _ in range(n):
                        step()
                    torch.cuda.synchronize()
                    s = (time.perf_counter() - t0) / n
                    row.update(image=f"{x.shape[-2]}x{x.shape[-1]}" if x.ndim == 4 else f"{x.shape[0]} px",
                               images_per_step=images, step_s=round(s, 4), images_s=round(images / s, 2),
                               peak_cuda_mb=round(torch.cuda.max_memory_allocated() / 2**20),
                               gpu_busy=busy_fraction(step))
                except Exception as exc:  # noqa: BLE001 - one configuration's failure (e.g. OOM) is a figure
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                finally:
                    model = x = y = step = None  # noqa: F841 - free the GPU before the next case
    return rows


def measure_loader(budget_s: float, demand_images_s: float | None, n_images: int = 8) -> dict[str, Any]:
    """A row per dataset shape x data placement (stream, memory, device) on this GPU, at the real image sizes
    (``benchmarks.loader``: images/s delivered, disk and host->device bytes per epoch after the first), against
    the FLOP estimate and, for HCV2, the RU-Net's measured bf16 demand."""
    import torch

    from benchmarks.loader import SHAPES, rows

    out: dict[str, Any] = {"images": n_images, "model_demand_images_s": demand_images_s, "rows": []}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in SHAPES:
            if time.perf_counter() - t_start > budget_s:
                out["rows"].append({"dataset": dataset, "skipped": f"time budget of {budget_s:.0f} s spent"})
                continue
            try:
                for row in rows([dataset], 1.0, n_images, 4, 3, 8, torch.device("cuda"), Path(tmp)):
                    if dataset == "hcv2" and demand_images_s and row["supply_img_s"]:
                        row["ratio_to_measured_demand"] = round(row["supply_img_s"] / demand_images_s, 2)
                    out["rows"].append(row)
            except Exception as exc:  # noqa: BLE001 - one dataset's failure (e.g. OOM) is its row's figure
                out["rows"].append({"dataset": dataset, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    out["note"] = "files just written, so read from the page cache: an upper bound for local disk"
    return out


def measure_export(budget_s: float, pixels: int = 200_000, device: str = "cuda") -> dict[str, Any]:
    """HyperSL ``small`` (random init; cost equals the released weights') on HCV2 spectra, bf16 and fp32.

    Each precision is its own row and its own try: fp32 running out of memory leaves the bf16 row's figures.
    A row also prints the pass size the export chose and, on CUDA, its measured peak per fp32 activation
    (what ``study.features.export.PASS_PEAK_FACTOR`` estimates)."""
    import torch

    from benchmarks.feature_export import flops_per_pixel, peak_tflops
    from study import features
    from study.data.specs import get_spec
    from study.features.export import pass_pixels
    from study.models.hypersl import SIZES, build_hypersl

    on_gpu = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(0) if on_gpu else device
    peak = peak_tflops(name)
    cfg, wl = SIZES["small"], get_spec("hcv2").wavelength_array()
    fpp = flops_per_pixel(wl.size, cfg.dim, cfg.encoder_depth)
    torch.manual_seed(0)
    model = build_hypersl("small").to(device)
    image = np.random.default_rng(0).random((1, pixels, wl.size), dtype=np.float32) * 1000 + 2000
    out: dict[str, Any] = {"gpu": name, "peak_bf16_tflops": peak, "gflop_per_px": round(fpp / 1e9, 3),
                           "pixels": pixels, "chunk": 5000, "rows": []}
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    t_start = time.perf_counter()
    for autocast in ("bf16", "off"):
        row: dict[str, Any] = {"autocast": autocast}
        out["rows"].append(row)
        if time.perf_counter() - t_start > budget_s:
            row["skipped"] = f"time budget of {budget_s:.0f} s spent"
            continue
        try:
            step = pass_pixels(wl.size + 1, cfg.dim, 5000, device, autocast)
            row["pass_pixels"] = step
            features.export_image(model, image[:, :10_000], wl, chunk_size=5000, device=device,
                                  autocast=autocast)  # warm-up
            sync()
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            features.export_image(model, image, wl, chunk_size=5000, device=device, autocast=autocast)
            sync()
            px_s = pixels / (time.perf_counter() - t0)
            pct = None if peak is None else round(100 * px_s * fpp / peak / 1e12, 1)
            row.update(pixels_s=round(px_s), tflop_s=round(px_s * fpp / 1e12, 1), pct_of_dense_bf16_peak=pct,
                       s_per_hcv2_image=round(HCV2_SHAPE[0] * HCV2_SHAPE[1] / px_s, 2))
            if on_gpu:
                activation = min(step, pixels) * (wl.size + 1) * cfg.dim * 4
                row["pass_peak_factor"] = round(
                    (torch.cuda.max_memory_allocated() - base - pixels * cfg.dim * 4) / activation, 2)
        except Exception as exc:  # noqa: BLE001 - one precision's failure (e.g. OOM) is its row's figure
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            if on_gpu:
                torch.cuda.empty_cache()
    return out


def smoke_study(budget_s: float) -> dict[str, Any]:
    """``study.run --smoke --gpus on --trials 2`` in a subprocess; its exit code, wall time and last lines."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "study.run", "--strategy", "indomain", "--smoke", "--gpus", "on",
               "--trials", "2", "--results", str(Path(tmp) / "results")]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=budget_s)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = None, [f"stopped after {budget_s:.0f} s", *str(exc.stdout or "").splitlines()[-3:]]
    return {"command": " ".join(cmd[1:]), "exit_code": rc, "ok": rc == 0,
            "wall_s": round(time.perf_counter() - t0, 1), "tail": tail}


def _part(out: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    try:
        out[name] = fn()
    except Exception as exc:  # noqa: BLE001 - each part reports its own error; the others still run
        out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    out.setdefault("part_wall_s", {})[name] = round(time.perf_counter() - t0, 1)


def _demand(rows: list[dict[str, Any]]) -> float | None:
    """Images/s the indomain RU-Net trains at on HCV2 in bf16: what the loader must keep up with."""
    for r in rows if isinstance(rows, list) else []:
        if (r["strategy"], r["dataset"], r["precision"]) == ("indomain", "hcv2", "bf16") and r.get("images_s"):
            return r["images_s"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="comma list of: " + ", ".join(BUDGET_S))
    p.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/gpu.json")
    args = p.parse_args(argv)
    if not cuda_available():
        print("benchmarks.gpu: no CUDA device on this machine; nothing measured")
        return 0
    chosen = set(BUDGET_S) if args.only is None else {s.strip() for s in args.only.split(",")}
    started = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "gpu", "machine": machine_info()}
    if "strategies" in chosen:
        _part(out, "strategies", lambda: measure_strategies(BUDGET_S["strategies"]))
    if "loader" in chosen:
        _part(out, "loader", lambda: measure_loader(BUDGET_S["loader"], _demand(out.get("strategies", []))))
    if "export" in chosen:
        _part(out, "export", lambda: measure_export(BUDGET_S["export"]))
    if "smoke_study" in chosen:
        _part(out, "smoke_study", lambda: smoke_study(BUDGET_S["smoke_study"]))
    out["wall_s"] = round(time.perf_counter() - started, 1)
    if not args.no_save:
        try:
            write_result("gpu", out)
        except OSError as exc:
            out["save_error"] = str(exc)
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
