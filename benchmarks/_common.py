"""Shared pieces of the benchmarks: machine info, atomic result files, tables, timers, peak memory.

Why one module: every benchmark must record the same machine facts (the host is
shared, so absolute times are only comparable together with the load average
and thread count they were measured under) and write its JSON the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


def add_mode_args(p: argparse.ArgumentParser) -> None:
    """``--quick`` (the default without CUDA: CPU-sized) or ``--full`` (the default with CUDA)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="quick", action="store_true", default=None,
                   help="CPU-sized run (default when no GPU is present)")
    g.add_argument("--full", dest="quick", action="store_false", help="larger sizes (default on a GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of this process (default 1 on CPU, as a 1-CPU Ray trial runs)")
    p.add_argument("--no-save", action="store_true", help="print only; do not write benchmarks/results/<name>.json")


def resolve_quick(quick: bool | None) -> bool:
    if quick is not None:
        return quick
    return not cuda_available()


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default 1 on CPU) and return the count in force.

    Why 1 by default: every study trial runs with one thread per CPU it was
    given (``study.train.threads``), and on this shared 2-core host two OpenMP
    threads collapse whenever another job holds a core (RU-Net small at HyKo2
    size measured 0.6 s/step on 1 thread vs 3.9 s on 2 under load 2.5).
    """
    import torch

    if threads is None and not cuda_available():
        threads = 1
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def git_commit() -> str | None:
    """The checked-out commit, read from ``.git`` files (no git process: other engineers share this tree)."""
    git = REPO_ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        return None
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}"


def machine_info() -> dict[str, Any]:
    """Facts needed to interpret absolute numbers: cores, threads, load, versions, device, commit, command."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "ray": _version("ray"),
        "optuna": _version("optuna"),
        "python": platform.python_version(),
        "device": device_name(),
        "git_commit": git_commit(),
        "command": "python -m " + " ".join([module_name(sys.argv[0]), *map(shlex.quote, sys.argv[1:])]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def module_name(argv0: str) -> str:
    p = Path(argv0)
    if p.suffix == ".py" and p.parent.name == "benchmarks":
        return "benchmarks" if p.stem == "__main__" else f"benchmarks.{p.stem}"
    return argv0


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<results_dir>/<name>.json`` atomically (temp file + rename): a reader never sees half a file."""
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=results_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def finish(name: str, payload: dict[str, Any], save: bool, started: float, info: dict[str, Any]) -> dict[str, Any]:
    """Add machine info (load average at start and end) and the wall time, print the targets, save."""
    info = {**info, "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    payload = {"benchmark": name, "machine": info, "wall_s": round(time.perf_counter() - started, 1), **payload}
    for t in payload.get("targets", []):
        print(f"target {t['name']}: {t['value']} vs {t['target']} -> {verdict(t['met'], t['target'])}" +
              (f"  ({t['note']})" if t.get("note") else ""))
    if save:
        print(f"wrote {write_result(name, payload)}")
    return payload


def verdict(met: bool | None, goal: str = "") -> str:
    """met / NOT met / not measurable here, or "reported" for figures the issue sets no target for."""
    if met is None and goal == "report":
        return "reported (no target)"
    return "met" if met is True else "NOT met" if met is False else "not measurable here"


def target(name: str, value: Any, goal: str, met: bool | None, note: str = "") -> dict[str, Any]:
    """One target line of a benchmark (``met`` None: not measurable on this machine)."""
    return {"name": name, "value": value, "target": goal, "met": met, "note": note}


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return "-" if v is None else str(v)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table (readable in CI logs and when pasted into docs)."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# ---------------------------------------------------------------- timing and memory
def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> tuple[float, Any]:
    """Seconds taken by ``fn()`` (with a device sync before and after when given) and its result."""
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, out


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5) so each measurement gets its own peak.

    Freed heap is first handed back to the OS (``malloc_trim``), else the
    allocator's leftovers of an earlier, bigger configuration count as this one's.
    """
    import ctypes
    import gc

    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: peaks may then include freed heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory in MB since the last :func:`reset_peak_rss` (else since process start).

    psutil is not installed here; /proc's VmHWM is what it would read, and
    ``resource.getrusage`` is the portable fallback (process-lifetime peak).
    """
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 1024.0


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float | None]]:
    """Measure peak RSS (and peak CUDA memory on a GPU) of the enclosed block into the yielded dict."""
    import torch

    out: dict[str, float | None] = {"peak_rss_mb": None, "peak_cuda_mb": None}
    reset_peak_rss()
    out["rss_before_mb"] = round((_status_kb("VmRSS") or 0) / 1024.0, 1)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    yield out
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def quiet(_: str) -> None:
    """An echo that prints nothing (the driver's progress lines would bury the tables)."""


def standard_main(name: str, doc: str | None, run: Callable[..., Any], argv: list[str] | None) -> int:
    """The CLI every benchmark shares: --quick/--full, --threads, --no-save, then ``run(quick, save=...)``."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    run(resolve_quick(args.quick), save=not args.no_save)
    return 0
