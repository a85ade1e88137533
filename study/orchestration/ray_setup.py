"""Ray for a study: a quiet console, the trial workers' environment, and connecting or starting Ray.

Split from ``study.run`` (the CLI): benchmarks and tests start Ray the same way without the parser.
"""

from __future__ import annotations

import logging
import os

from study.config import StudyConfig
from study.progress import reinstall_signals
from study.store import is_disk_full

#: Tune's loggers that print a traceback for every failed checkpoint sync, experiment-state save and trial when
#: the disk under ``tune/`` is full (about a thousand lines); the study says it once (``run.run_until_disk_full``)
_DISK_FULL_NOISE = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state",
                    "ray.train._internal.syncer", "ray._private.worker")


class _NotDiskFull(logging.Filter):
    """Drops a log record whose message or exception says the disk is full."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(record.getMessage()) or (exc is not None and is_disk_full(exc)))


def quiet_ray_tune() -> None:
    """Keep the console to our own progress lines: no Tune tables, automatic TensorBoard files or Optuna chatter.

    Tune's JSON/CSV trial logs are still written (see ``tuning.run_config``), and the trackers of
    ``--log-to`` are added as explicit callbacks (``study.orchestration.trackers``); the Parquet store
    is the record of the study.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray otherwise swaps builtins.print after it prints a node/worker error, and callbacks holding the
    # original print can no longer be pickled into the next Tuner's state (crashes the study).
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    for name in _DISK_FULL_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotDiskFull) for f in logger.filters):
            logger.addFilter(_NotDiskFull())
    logging.getLogger("optuna").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's "creating tables" lines


def trial_env() -> dict[str, str]:
    """Environment of the local Ray's worker processes: one malloc arena, and no GPU for zero-GPU workers.

    Tune runs a function trainable in a thread of its actor, and glibc gives every thread its own malloc
    arena of 64-MB heaps that do not give memory back the way the main one does: a HyperSL k = 1 trial
    (tensors of tens of MB, a new shape every chunk) grew to 4.4 GB in Ray against 1.16 GB in a main
    thread, at 0.06 GiB of data. One arena: 1.14 GB in Ray, at the same speed (performance.md §7; the
    RU-Net k = 1 trial still grows in Ray, an open problem there).

    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``: Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for a worker
    that requests no GPU, so a ``--gpus off`` trial would see (and use) GPU 0; with it Ray hides the GPUs
    from such a worker, as it did before 2.60 (the second guard: ``devices.pick_device`` asks Ray itself).

    A value the user set is kept; on a cluster the Docker image sets both (Dockerfile ``ENV``).
    """
    return {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "1"),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")}


def cpus_per_gpu() -> float | None:
    """CPUs per GPU of the cluster's live GPU nodes (the smallest ratio among them; Ray must be up), or None when
    no GPU node is up yet (an autoscaler starts them on demand: trials then keep their registry CPUs)."""
    import ray

    ratios = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in ray.nodes()
              if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    return min(ratios) if ratios else None


#: The orphan reaper (stdlib only, run as ``python -S -c``): every second it notes the driver's descendants
#: (pid and start time, from /proc); once the driver is gone (its parent pid changes: SIGKILL, a crash), it
#: SIGKILLs those still running. Ray's processes started by the driver share its fate (PR_SET_PDEATHSIG), but
#: the raylet's own children (DashboardAgent, RuntimeEnvAgent, idle default_workers) outlived a SIGKILLed
#: driver; a normal exit has already stopped them all (Ray's atexit), so the reaper finds nothing then.
_REAPER = """
import os, sys, time
driver, me = int(sys.argv[1]), os.getpid()
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19], fields[0]
    except (OSError, IndexError, ValueError):
        return None
def tree():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := stat(int(name))) is not None:
            kids.setdefault(st[0], []).append((int(name), st[1]))
    out, todo = {}, [driver]
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid != me:
                out[pid] = start
                todo.append(pid)
    return out
seen = {}
while os.getppid() == driver:
    seen.update(tree())
    time.sleep(1.0)
time.sleep(2.0)
for pid, start in seen.items():
    st = stat(pid)
    if st is not None and st[1] == start and st[2] not in ("Z", "X"):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
"""


def start_orphan_reaper() -> None:
    """Start the :data:`_REAPER` for this driver (Linux; once per process)."""
    import subprocess
    import sys

    global _REAPER_STARTED
    if _REAPER_STARTED or not sys.platform.startswith("linux"):
        return
    _REAPER_STARTED = True
    subprocess.Popen([sys.executable, "-S", "-c", _REAPER, str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


_REAPER_STARTED = False


def init_ray(cfg: StudyConfig) -> None:
    """Connect to a cluster (--address / RAY_ADDRESS) or start a local Ray without a dashboard."""
    import ray

    quiet_ray_tune()
    if ray.is_initialized():  # e.g. a test session or a notebook that started Ray already
        return
    rt = cfg.runtime
    address = rt.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        reinstall_signals()
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray on this machine only
        # the dashboard exposes job control: off by default, and bound to localhost unless the user says otherwise
        ray.init(address="local", num_cpus=rt.num_cpus, include_dashboard=rt.dashboard,
                 dashboard_host=rt.dashboard_host, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": trial_env()})
        reinstall_signals()  # ray.init replaced our SIGTERM handler (exit 1, no resume hint) with its own
        start_orphan_reaper()  # a local Ray's agents and workers end with this driver, even after a SIGKILL


def sweep_node_copies(timeout_s: float = 30.0) -> int:
    """Remove the node-shared data copies (``--data-placement memory``) that no trial holds, on every alive node:
    one zero-CPU task per node, at the end of a study. Best effort: a node not reached in ``timeout_s`` keeps its
    copies until the next writer there sweeps the idle ones (``study.data.shared_copy.IDLE_S``). Returns how many
    were removed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from study.data.shared_copy import sweep

    @ray.remote(num_cpus=0, max_retries=0)
    def _sweep() -> int:
        return len(sweep(idle_s=0))

    try:
        refs = [_sweep.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in ray.nodes() if n.get("Alive")]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return sum(ray.get(done)) if done else 0
    except Exception:  # noqa: BLE001 - cleaning up is not worth failing a finished study over
        return 0
