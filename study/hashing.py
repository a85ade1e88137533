"""The one content-hashing helper: ids of studies, cells, trial configs and caches.

Every id in hsistudy is the sha256 of a canonical text (sorted-key JSON, or a
file's bytes) cut to a length that fits its use. One function, so two ids of
the same thing can never disagree about how they were made.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def json_digest(obj: Any, length: int = 16) -> str:
    """First ``length`` hex digits of sha256 over ``obj`` as sorted-key JSON (non-JSON values as ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


#: full sha256 hex digests by (resolved path, size, mtime): a backbone or split file is read once per process,
#: however many places ask (its hash for rows and caches, its digest for --stage-data)
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path, length: int = 16, block: int = 8 << 20) -> str:
    """First ``length`` hex digits of sha256 over a file's bytes (64: all), read in blocks (weights can be GBs)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(block):
                digest.update(chunk)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key][:length]
