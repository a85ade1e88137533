"""The local Ray's workers get one malloc arena (study.run.trial_env): Tune trains in a thread of its actor."""

from __future__ import annotations

import pytest

from study.run import trial_env


def test_one_arena_by_default_and_the_user_s_value_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert trial_env() == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert trial_env() == {"MALLOC_ARENA_MAX": "4"}


def test_init_ray_starts_the_local_ray_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from study.config import build_config
    from study.run import init_ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    init_ray(build_config("smoke", strategies=("indomain",)))
    assert calls and calls[0]["address"] == "local"
    assert calls[0]["runtime_env"] == {"env_vars": {"MALLOC_ARENA_MAX": "1"}}
