"""An exclusive inter-process file lock.

Why a module of its own: the backbone cache (:mod:`study.pretrain.cache`) and
the feature cache (:mod:`study.features`) both make a missing artefact once while
many Ray workers ask for it; neither should import the other to get the lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its folder), so concurrent workers make a file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
