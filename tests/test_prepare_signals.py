"""python -m study.prepare --workers 2: SIGTERM / SIGINT to its pid stop it with exit 130 and the hint, and its
decoding workers never outlive it, not even a SIGKILL of the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_prepare import HCV2_FOLDERS, HCV2_NEW, ODD_SIZES
from test_prepare_support import build_hcv2, write_lists

from study.progress import descendants

REPO = Path(__file__).resolve().parents[1]


def _slow_prepare(tmp_path: Path) -> subprocess.Popen:
    """``study.prepare hcv2 --workers 2`` whose decoding takes 60 s an image (the workers import the slow loader
    from the script's folder, as a spawned worker gets its parent's sys.path)."""
    build_hcv2(tmp_path / "raw", HCV2_FOLDERS, np.random.default_rng(4), ODD_SIZES)
    lists = write_lists(tmp_path / "lists", HCV2_NEW)
    (tmp_path / "slowload.py").write_text("import time\n\ndef load(job):\n    time.sleep(60)\n")
    script = tmp_path / "run_prepare.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(1, {str(REPO)!r})
        import slowload
        import study.prepare.writer as writer
        writer.load_sample = slowload.load
        from study.prepare.cli import main
        if __name__ == "__main__":  # spawned decoding workers import this script as __mp_main__
            sys.exit(main(["hcv2", "--raw", {str(tmp_path / "raw")!r}, "--out", {str(tmp_path / "out")!r},
                           "--splits", {str(lists)!r}, "--workers", "2"]))
    """))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for a container's init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _workers(proc: subprocess.Popen, n: int = 2, timeout: float = 60) -> list[int]:
    """The parent's descendants once ``n`` decoding workers run (multiprocessing's resource tracker too)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = descendants(proc.pid)
        if sum("spawn_main" in _cmdline(k) for k in kids) >= n:
            time.sleep(1.0)  # let them start decoding
            return descendants(proc.pid)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pytest.fail("the decoding workers did not start")


def _all_gone(pids: list[int], within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if _running(p)]
    for p in alive:  # do not leave them behind for the next test
        os.kill(p, signal.SIGKILL)
    return not alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_prepare_stops_it_at_once_with_the_hint(tmp_path: Path, sig: int) -> None:
    proc = _slow_prepare(tmp_path)
    workers = _workers(proc)
    t0 = time.monotonic()
    os.kill(proc.pid, sig)  # the parent alone: the workers decode on unless it ends them
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - t0 < 15, out + err
    assert "run the same command again to continue" in err and "Traceback" not in err, err
    assert _all_gone(workers, within=10)


def test_prepare_workers_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    proc = _slow_prepare(tmp_path)
    workers = _workers(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.communicate()
    assert _all_gone(workers, within=15)
