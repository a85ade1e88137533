"""The one content-hashing helper: ids of studies, cells, trial configs and caches.

Every id in hsistudy is the sha256 of a canonical text (sorted-key JSON, or a
file's bytes) cut to a length that fits its use. One function, so two ids of
the same thing can never disagree about how they were made.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def json_digest(obj: Any, length: int = 16) -> str:
    """First ``length`` hex digits of sha256 over ``obj`` as sorted-key JSON (non-JSON values as ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16, block: int = 1 << 20) -> str:
    """First ``length`` hex digits of sha256 over a file's bytes, read in blocks (weights can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()[:length]
