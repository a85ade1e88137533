"""Which code produced a result row: the package version plus the git commit (and dirty flag) when known.

Why: ``0.1.0`` alone cannot tell two runs of different working trees apart, and a
report must let a reader find the exact code behind a number. The commit is read
from the checkout the *imported* ``study`` package lives in (not the current
directory), so a run started from elsewhere still names the code that ran. A wheel
installed outside any checkout reports its package version, or what the image
builder put in ``HSISTUDY_CODE_VERSION`` (the Dockerfile passes the commit there).
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

from study import __version__

#: set by container builds (``--build-arg GIT_SHA``), where no .git folder is shipped
ENV_VAR = "HSISTUDY_CODE_VERSION"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_describe(package_dir: Path = _PACKAGE_DIR) -> str | None:
    """``g<sha12>`` or ``g<sha12>.dirty`` for the checkout holding ``package_dir``; None outside a checkout.

    Only a checkout whose top level directly contains the package counts: a wheel
    installed into a venv that happens to sit inside some other repository must not
    borrow that repository's commit. "Dirty" means tracked files differ from the commit.
    """
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != package_dir.parent:
        return None
    sha = _git(package_dir, "rev-parse", "--short=12", "HEAD")
    if not sha:
        return None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return f"g{sha}" + (".dirty" if status else "")


@cache
def code_version() -> str:
    """``0.1.0+g<sha>[.dirty]`` from a git checkout, else ``$HSISTUDY_CODE_VERSION``, else ``0.1.0``.

    Cached: computed once per process (the driver calls it for every row).
    """
    if env := os.environ.get(ENV_VAR, "").strip():
        return env
    described = git_describe()
    return f"{__version__}+{described}" if described else __version__
