"""A trial on a data set larger than its memory cap completes: it streams, it never holds a split.

Slow (writes a 1.2 GiB HSI-Drive-shaped set and 1.5 GiB of random 64-d float16 features in the study's
feature cache, about a minute) and needs root with a writable memory
cgroup controller; skipped otherwise. The whole-study version for two sizes is ``python -m benchmarks.memory``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.memory import GIB, Cgroup, populate_features, write_dataset

pytestmark = pytest.mark.slow

TRIAL = """
import sys, torch
torch.set_num_threads(1)
from study.data.bundle import make_bundle
from study.data.datasets import open_split
from study.data.specs import get_spec
from study.data.subsets import make_subset
from trainables.indomain import train_indomain
from trainables.indomain_fc import train_indomain_fc
from trainables.crossdomain_fc import train_crossdomain_fc
spec = get_spec("hsidrive")
splits = {s: open_split(sys.argv[1], spec, s) for s in spec.splits}
subset = make_subset("hsidrive", splits["train"].names, splits["train"].classes_present(), 0.1, 0)
bundle = make_bundle(spec, splits, subset, "test")
cfg = dict(lr=1e-3, weight_decay=1e-4, max_epochs=1, batch_size=2, eval_batch_size=2, seed=0, final=True,
           patience=None, num_threads=1, width="tiny", dropout=0.1)
out = []
fsplits = {s: open_split(sys.argv[2], spec, s) for s in spec.splits}  # random features (benchmarks.memory)
features = make_bundle(spec, fsplits, subset, "test")
for fn, data, extra in ((train_indomain, bundle, {}), (train_indomain_fc, bundle, {"sub_batch": 8192}),
                        (train_crossdomain_fc, features, {"sub_batch": 8192, "freeze_depth": 0})):
    fn({**cfg, **extra}, data, report=lambda m, checkpoint=None: out.append(m), get_checkpoint=lambda: None)
assert all("test_miou" in m for m in out), out
# --data-placement auto: the splits do not fit the cgroup's room, so the trials stream (never a shared copy)
assert {m["data_placement"] for m in out} == {"stream"}, {m["data_placement_why"] for m in out}
print("TRAINED", len(out))
"""


def _cgroups_writable() -> bool:
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    return os.geteuid() == 0 and (Path("/sys/fs/cgroup/memory").is_dir()
                                  or (v2.is_file() and "memory" in v2.read_text().split()))


@pytest.mark.skipif(not _cgroups_writable(), reason="needs root and a writable memory cgroup")
def test_trial_on_a_set_larger_than_its_cap_completes(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 1.2)
    features = populate_features(data, tmp_path / "cache", None)
    cap = int(1.0 * GIB)
    for folder in (data, features):
        assert sum(f.stat().st_size for f in folder.glob("*.h5")) > cap
    script = tmp_path / "trial.py"
    script.write_text(TRIAL)
    cg = Cgroup(f"hsistudy-test-{os.getpid()}", cap)
    log = tmp_path / "trial.log"
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        rc = cg.popen([sys.executable, str(script), str(data), str(features)], log, env).wait()
        kills = cg.oom_kills()
    finally:
        cg.remove()
    assert rc == 0 and kills == 0, f"rc={rc}, oom kills={kills}: {log.read_text()[-2000:]}"
    assert "TRAINED 3" in log.read_text()
