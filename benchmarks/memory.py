"""Peak memory of a whole study on a data set larger than the memory it may use (issue 13).

``python -m benchmarks.memory`` writes two HSI-Drive-shaped data sets (216 x 409 x 25 float32 cubes in the
HS3-Bench layout, random-ish values: size is what is measured) of ``--sizes`` GiB, runs the same small study
on each inside a memory cgroup capped at ``--cap`` GiB, and prints the peak memory of the whole process tree
(driver, Ray, trials, loader workers) for both sizes and their ratio. A trial that held its data in memory
would be OOM-killed on the larger set; a streaming one uses the same memory for both (target ratio <= 1.15).

Two peaks per run: ``peak_anon`` (sampled every 0.2 s: rss + shmem of the cgroup, i.e. process memory and
Ray's object store, without the reclaimable page cache the reads leave) and ``peak_cgroup`` (the kernel's
high-water mark, which also counts page cache and so sits near the cap on any data set larger than it).

The crossdomain strategies read the HyperSL feature cache. Exporting the features of a >= 3 GiB set takes
hours on a CPU, and what is measured is trials streaming data, not the export: by default the benchmark
writes *random* float16 features of the backbone's width into exactly the cache files
``study.features.export.ensure_features`` would use for that backbone and data (same key, layout and attributes),
so the study finds them cached and skips the export (``--features export`` computes them instead).
``--freeze-depth k`` fixes the crossdomain strategies' k (a ``[search_space.*]`` override) so both arms run.

Needs root and a writable memory controller (cgroup v1 ``/sys/fs/cgroup/memory`` or v2 with ``memory``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np

GIB = 2**30
SHAPE = (216, 409)  # HSI-Drive v2 at HS3-Bench's resolution
STRATEGIES = "indomain,crossdomain,crossdomain-fc"


def write_dataset(out: Path, gib: float, seed: int = 0, shape: tuple[int, int] = SHAPE) -> Path:
    """``hsidrive_{train,val,test}.h5`` totalling ``gib`` GiB of float32 cubes (a third per split)."""
    from study.data.specs import get_spec

    spec = get_spec("hsidrive")
    h, w = shape
    per_image = h * w * spec.n_bands * 4
    n = max(3, int(gib * GIB / per_image / 3))
    done = out / "COMPLETE"
    if done.is_file() and done.read_text() == f"{n} {h} {w}":
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wl = spec.wavelength_array()
    base = np.linspace(0.05, 0.4, spec.n_bands, dtype=np.float32)
    for si, split in enumerate(("train", "val", "test")):
        with h5py.File(out / f"hsidrive_{split}.h5", "w") as fh:
            fh.attrs["wavelengths"] = wl
            for i in range(n):
                blocks = rng.integers(0, 11, size=(h // 8 + 1, w // 8 + 1), dtype=np.uint8)  # raw ids 0..10
                labels = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w]
                image = base * (0.5 + labels[..., None].astype(np.float32) / 10)
                image = image + rng.random((h, w, spec.n_bands), dtype=np.float32) * 0.05
                g = fh.create_group(f"nf{si}{i:05d}")
                g.create_dataset("image", data=image)
                g.create_dataset("labels", data=labels)
    done.write_text(f"{n} {h} {w}")
    return out


class Cgroup:
    """A child memory cgroup with a limit; processes started through :meth:`popen` (and their children) run in it."""

    def __init__(self, name: str, limit: int) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.is_file() and "memory" in v2.read_text().split():
            self.v2, self.path = True, Path("/sys/fs/cgroup") / name
        elif Path("/sys/fs/cgroup/memory").is_dir():
            self.v2, self.path = False, Path("/sys/fs/cgroup/memory") / name
        else:
            raise SystemExit("no writable memory cgroup controller (needs cgroup v1 memory or v2 with memory)")
        self.path.mkdir(exist_ok=True)
        self._write("memory.max" if self.v2 else "memory.limit_in_bytes", str(limit))
        if not self.v2:
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def _write(self, key: str, value: str) -> None:
        (self.path / key).write_text(value)

    def popen(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        """Start ``cmd`` inside the cgroup: a shell joins it, then execs the command (children inherit it)."""
        procs = self.path / "cgroup.procs"
        line = f'echo $$ > {procs} && exec "$@"'
        return subprocess.Popen(["sh", "-c", line, "sh", *cmd], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env=env)

    def anon_bytes(self) -> int:
        """Process memory + shared memory (Ray's object store) of the cgroup, without page cache."""
        stat = dict(line.split() for line in (self.path / "memory.stat").read_text().splitlines())
        if self.v2:
            return int(stat["anon"]) + int(stat["shmem"])
        return int(stat["total_rss"]) + int(stat["total_shmem"])

    def process_peaks(self) -> dict[str, int]:
        """Each process's own peak RSS so far (VmHWM), by process title (``ray::ImplicitFunc.train`` is a trial)."""
        out: dict[str, int] = {}
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmHWM")), 0)
                key = title.split()[0] if title.startswith("ray::") else Path(title).name
                out[key] = max(out.get(key, 0), hwm)
        return out

    def peak(self) -> int:
        p = self.path / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        return int(p.read_text()) if p.is_file() else -1

    def oom_kills(self) -> int:
        if self.v2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        ctl = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(ctl.get("oom_kill", 0))

    def remove(self) -> None:
        """Remove the cgroup; Ray daemons of the study still in it after 20 s (they outlive a killed driver)
        are killed first: everything in it was started by :meth:`popen`."""
        procs = self.path / "cgroup.procs"
        for i in range(120):
            pids = [int(p) for p in procs.read_text().split()]
            if not pids:
                break
            if i >= 100:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            self.path.rmdir()


def populate_features(data: Path, cache: Path, backbone: str | None, dtype: str = "float16",
                      bn_mode: str = "chunk", seed: int = 0) -> Path:
    """Random features in the study's own feature-cache files for ``data`` (memory, not quality): the folder.

    Same checkpoint (``backbone`` or the study's default, made here as the study would make it), cache key
    (``feature_cache_path``), groups (features + raw labels) and root attributes (``feature_attrs``) as
    ``ensure_features``, which then reuses them. A few random images are reused so writing is I/O-bound.
    """
    from study.data.datasets import open_split
    from study.data.specs import get_spec
    from study.features import default_chunk, feature_attrs, feature_cache_path, is_current, source_id, temp_path
    from study.models.checkpoints import checkpoint_hash, load_hypersl
    from study.pretrain import default_config, ensure_default_backbone

    path = Path(backbone) if backbone else ensure_default_backbone(cache_dir=cache, config=default_config("cpu"),
                                                                   progress=False)
    path = path.resolve()
    ckpt, dim = checkpoint_hash(path), load_hypersl(path).dim
    spec, chunk = get_spec("hsidrive"), default_chunk("hsidrive")
    rng = np.random.default_rng(seed)
    pool = [rng.standard_normal((*SHAPE, dim), dtype=np.float32).astype(dtype) for _ in range(4)]
    folder = None
    for split in spec.splits:
        out = feature_cache_path(cache, ckpt, "hsidrive", split, bn_mode, chunk, dtype, source_id(data))
        folder = out.parent
        src = open_split(data, spec, split)
        if is_current(out, src.path):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(out)
        with h5py.File(src.path, "r") as raw, h5py.File(tmp, "w") as fh:
            for i, name in enumerate(src.names):
                g = fh.create_group(name)
                g.create_dataset("image", data=pool[i % len(pool)][: raw[name]["labels"].shape[0]])
                g.create_dataset("labels", data=raw[name]["labels"][()])
            fh.attrs.update(feature_attrs(src, ckpt_hash=ckpt, bn_mode=bn_mode, chunk=chunk, dtype=dtype,
                                          autocast="off", dim=dim, dataset="hsidrive", split=split))
        os.replace(tmp, out)
    assert folder is not None
    return folder


def freeze_depth_config(work: Path, k: int, strategies: str) -> Path:
    """A ``--config`` file fixing freeze_depth = k for the crossdomain strategies in ``strategies``."""
    names = [s for s in strategies.split(",") if s.startswith("crossdomain")]
    text = "".join(f'[search_space.{s}]\nfreeze_depth = {{low = {k}, high = {k}}}\n' for s in names)
    path = work / f"k{k}.toml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_capped(data: Path, results: Path, cap: float, args: argparse.Namespace) -> dict:
    """One study on ``data`` under a ``cap`` GiB cgroup; its peaks, OOM kills, exit code and wall time."""
    shutil.rmtree(results, ignore_errors=True)
    cmd = [sys.executable, "-m", "study.run", "--dataset", "hsidrive", "--data-root", str(data),
           "--strategy", args.strategies, "--fractions", args.fraction, "--trials", str(args.trials),
           "--epochs", "1", "--seeds", "1", "--width", "tiny", "--num-cpus", str(args.cpus),
           "--max-freeze-depth", str(args.max_freeze_depth), "--results", str(results)]
    if args.backbone:
        cmd += ["--backbone", args.backbone]
    if args.freeze_depth is not None:
        cmd += ["--config", str(freeze_depth_config(args.work, args.freeze_depth, args.strategies))]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "HSISTUDY_CACHE": str(args.work / "cache")}
    cg = Cgroup(f"hsistudy-mem-{os.getpid()}-{data.name}", int(cap * GIB))
    peak_anon, stop = [0], threading.Event()
    per_process: dict[str, int] = {}  # the largest VmHWM seen per process title: where the memory is

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, KeyError, ValueError):
                peak_anon[0] = max(peak_anon[0], cg.anon_bytes())
                for title, hwm in cg.process_peaks().items():
                    per_process[title] = max(per_process.get(title, 0), hwm)
            time.sleep(0.2)

    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc = cg.popen(cmd, results.parent / f"{results.name}.log", env)
    rc = proc.wait()
    stop.set()
    thread.join()
    out = {"data_gib": round(sum(f.stat().st_size for f in data.glob("*.h5")) / GIB, 2), "rc": rc,
           "oom_kills": cg.oom_kills(), "peak_anon_gib": round(peak_anon[0] / GIB, 3),
           "peak_cgroup_gib": round(cg.peak() / GIB, 3), "wall_s": round(time.perf_counter() - t0, 1),
           "process_peak_rss_gib": {t: round(b / GIB, 3)
                                    for t, b in sorted(per_process.items(), key=lambda kv: -kv[1])[:6]},
           "log": str(results.parent / f"{results.name}.log")}
    cg.remove()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1.6,3.2", help="two data-set sizes in GiB (default 1.6,3.2)")
    p.add_argument("--cap", type=float, default=2.5, help="cgroup memory cap in GiB (default 2.5)")
    p.add_argument("--strategies", default=STRATEGIES)
    p.add_argument("--fraction", default="0.05", help="training fraction (val and test are always complete)")
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--max-freeze-depth", type=int, default=1, help="k range searched (default 0..1)")
    p.add_argument("--freeze-depth", type=int, default=None,
                   help="fix k of the crossdomain strategies (every trial; implies --max-freeze-depth k)")
    p.add_argument("--features", choices=("random", "export"), default="random",
                   help="crossdomain features: random ones pre-populated in the study's cache (default: the "
                        "memory of streaming, not quality) or the real export (hours on a CPU at >= 1 GiB)")
    p.add_argument("--backbone", default=None, help="HyperSL checkpoint for the crossdomain strategies")
    p.add_argument("--cpus", type=int, default=1, help="Ray CPUs (default 1: one trial at a time, so the peak is "
                   "Ray + one trial; 2 runs two trials side by side, each with its own model memory)")
    p.add_argument("--work", type=Path, default=Path("/tmp/hsistudy-memory"))
    p.add_argument("--keep", action="store_true", help="keep the generated data sets")
    args = p.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",")]
    if args.freeze_depth is not None:
        args.max_freeze_depth = args.freeze_depth
    crossdomain = "crossdomain" in args.strategies
    if crossdomain:
        print("features: " + ("random, pre-populated: memory, not quality" if args.features == "random"
                              else "exported by the study"), flush=True)
    runs = []
    for gib in sizes:
        data = write_dataset(args.work / f"data{gib:g}", gib)
        if crossdomain and args.features == "random":
            populate_features(data, args.work / "cache", args.backbone)
        runs.append(run_capped(data, args.work / f"results{gib:g}", args.cap, args))
        print(json.dumps(runs[-1]), flush=True)
    if not args.keep:
        for gib in sizes:
            shutil.rmtree(args.work / f"data{gib:g}", ignore_errors=True)
    small, large = runs[0], runs[-1]
    ratio = large["peak_anon_gib"] / small["peak_anon_gib"] if small["peak_anon_gib"] else float("nan")
    summary = {"cap_gib": args.cap, "strategies": args.strategies, "freeze_depth": args.freeze_depth,
               "features": args.features if crossdomain else None, "runs": runs, "peak_ratio": round(ratio, 3),
               "ok": all(r["rc"] == 0 and r["oom_kills"] == 0 for r in runs) and ratio <= 1.15}
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
