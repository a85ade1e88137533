"""CPU thread count of a trial.

Ray sets ``OMP_NUM_THREADS`` to a trial's CPU share, but torch may already have
started its pool; setting it explicitly keeps two 1-CPU trials on a 2-core
machine from fighting over both cores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch


def configure_threads(config: Mapping[str, Any]) -> int:
    """Set torch's intra-op threads from ``config['num_threads']`` or OMP_NUM_THREADS; return it."""
    n = config.get("num_threads") or os.environ.get("OMP_NUM_THREADS")
    if n:
        n = max(1, int(float(n)))
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    return torch.get_num_threads()
