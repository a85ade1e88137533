"""Apply each of issue 29's "Done means" mutants alone, run the tests that must catch it, restore the file.

    python scripts/check_mutants.py            # all six; exit 1 if a mutant survives
    python scripts/check_mutants.py hsd-hw     # one by name

Each mutant is an exact text edit that must match once. A mutant is *killed* when pytest exits non-zero on
its test files with the mutant applied; the file is restored byte for byte afterwards (also on Ctrl+C).
The full default suite kills them too (the named files are part of it); these files are the fast check.
docs/testing.md records the last run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant("paper-order-unsorted", "study/data/subsets.py",
           "    ordered = sorted(names)\n    perm = torch.randperm(",
           "    ordered = list(names)\n    perm = torch.randperm(",
           ("tests/test_paper_subsets.py",)),
    Mutant("early-stopping-off", "study/train/loop.py",
           "stop_early = settings.patience is not None and epoch - best_epoch >= settings.patience",
           "stop_early = False",
           ("tests/test_loop_contract.py",)),
    Mutant("best-state-restore-skipped", "study/train/loop.py",
           "                    load_mutable_state(model, best_state)\n",
           "                    pass\n",
           ("tests/test_loop_contract.py",)),
    Mutant("hyko2-chunk-5000", "study/features/export.py",
           '"hyko2": 50000}', '"hyko2": 5000}',
           ("tests/test_recipes.py",)),
    Mutant("hsidrive-runet-batch-16", "search_spaces/indomain.py",
           '"batch_size": {"hyko2": 16, "hsidrive": 32, "hcv2": 4}',
           '"batch_size": {"hyko2": 16, "hsidrive": 16, "hcv2": 4}',
           ("tests/test_recipes.py",)),
    # the header's first two fields read as (width, height); renaming the HEADER dtype's fields instead is an
    # equivalent mutant (HsdHeader is built from the values by position)
    Mutant("hsd-height-width-swapped", "study/prepare/hsd.py",
           "    height: int\n    width: int\n",
           "    width: int\n    height: int\n",
           ("tests/test_hsd_reference.py",)),
    Mutant("hsd-scores-shape-swapped", "study/prepare/hsd.py",
           "shape=(h.height, h.width, h.d)",
           "shape=(h.width, h.height, h.d)",
           ("tests/test_hsd_reference.py",)),
)


def run(m: Mutant) -> bool:
    """True when the mutant is killed."""
    path = ROOT / m.path
    original = path.read_bytes()
    text = original.decode()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the text to mutate occurs {text.count(m.old)} times in {m.path}, not once")
    try:
        path.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        path.write_bytes(original)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    failed = [ln.split(" - ")[0] for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
    killed = proc.returncode != 0
    print(f"{m.name}: {'KILLED' if killed else 'SURVIVED'} by {' '.join(m.tests)} -> {summary}"
          + (f" ({failed[0]})" if failed else ""), flush=True)
    return killed


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    if not chosen:
        raise SystemExit(f"unknown mutant; choose from {', '.join(m.name for m in MUTANTS)}")
    survived = [m.name for m in chosen if not run(m)]
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
