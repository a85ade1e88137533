"""The local Ray's workers get one malloc arena (study.orchestration.ray_setup.trial_env): Tune trains in a
thread of its actor. That ``init_ray`` passes it to the local Ray is checked in tests/test_cli.py with the
dashboard settings."""

from __future__ import annotations

import pytest

from study.orchestration import trial_env


def test_one_arena_by_default_and_the_user_s_value_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert trial_env() == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert trial_env() == {"MALLOC_ARENA_MAX": "4"}
