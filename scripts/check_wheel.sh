#!/usr/bin/env bash
# The packaging promise, checked end to end: build the wheel, install it into a fresh venv OUTSIDE the
# source tree, then run a smoke study and its report from a directory that holds nothing of the repo.
# Usage: scripts/check_wheel.sh [WORKDIR]   (default: a new temp dir; ~3-6 min, most of it pip)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d /tmp/hsistudy-wheel.XXXXXX)}"
mkdir -p "$WORK"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PIP_DISABLE_PIP_VERSION_CHECK=1
# a cache of its own: nothing made by the checkout (synthetic data, backbones) may be reused
export HSISTUDY_CACHE="$WORK/cache"
rm -rf "$WORK/wheels" "$WORK/venv" "$WORK/results"
"$REPO/.venv/bin/python" -m pip wheel -q --no-deps -w "$WORK/wheels" "$REPO"
WHEEL="$(ls "$WORK"/wheels/hsistudy-*.whl)"
"$PY" -m venv "$WORK/venv"
# torch first: 2.13.0 is the CPU build available here; a plain torch would pull a multi-GB CUDA build
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"
cd "$WORK"  # not the repo: imports must come from the installed wheel
"$WORK/venv/bin/python" - <<'PY'
import study, study.data.spectra as sp
assert "site-packages" in study.__file__, study.__file__
assert sp.bundle() is not None, "the spectra bundle is missing from the wheel"
PY
"$WORK/venv/bin/hsistudy" --help | grep -q "report"
"$WORK/venv/bin/hsistudy" run --help | grep -q -- "--smoke"
"$WORK/venv/bin/hsistudy" run --strategy indomain --smoke --results "$WORK/results"
"$WORK/venv/bin/hsistudy" report "$WORK/results"
test -s "$WORK/results/report.html"
echo "wheel check passed: $WHEEL -> $WORK/results/report.html"
