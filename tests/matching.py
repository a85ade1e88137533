"""Patterns for ``pytest.raises(match=...)`` that hold a message word for word."""

from __future__ import annotations

import re


def whole(message: str) -> str:
    """A pattern matching exactly ``message``: escaped, anchored at both ends."""
    return "^" + re.escape(message) + "$"
