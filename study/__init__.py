"""hsistudy: distributed data-efficiency studies of hyperspectral transfer learning."""

from __future__ import annotations

__version__ = "0.1.0"
