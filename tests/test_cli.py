"""The CLI's user interface: --help with examples, one-line errors (exit 2), no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from study.run import build_parser, config_from_args, main


def test_help_documents_every_flag_with_examples() -> None:
    text = build_parser().format_help()
    for flag in ("--strategy", "--dataset", "--data-root", "--fractions", "--trials", "--epochs", "--seeds",
                 "--results", "--smoke", "--address"):
        assert flag in text
    assert "examples:" in text and "python -m study.run --strategy indomain --smoke" in text


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--dataset", "indianpines"], "unknown dataset 'indianpines'; valid datasets: all, hcv2, hsidrive, hyko2"),
        (["--fractions", "0.5,1.5"], "--fractions: '1.5' is outside the rule 0 < f <= 1 (did you mean 1.5%?)"),
        (["--fractions", "0,0.5"], "--fractions: '0' is outside the rule 0 < f <= 1"),
        (["--fractions", "1,-0.2"], "--fractions: '-0.2' is outside the rule 0 < f <= 1"),
        (["--fractions", "0.5,abc"], "--fractions: 'abc' is not a number; use e.g. 0.05 or 5%"),
        (["--epochs", "2", "--grace-period", "5"],
         "grace_period <= epochs must hold, got (grace_period=5, epochs=2); lower --grace-period or raise --epochs"),
        (["--trials", "0"], "--trials must be >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, line, capsys) -> None:
    """The whole error line, word for word: a fragment such as "0" would match almost any message."""
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: {line}\n"


def test_an_unknown_strategy_is_one_line_naming_the_valid_ones(capsys) -> None:
    from study.strategies import STRATEGIES

    assert {"indomain", "crossdomain", "crossdomain-fc", "crossmodality"} <= set(STRATEGIES)
    assert main(["--strategy", "nope"]) == 2
    valid = ", ".join(sorted(STRATEGIES))  # the registry: a test may have registered one more
    assert capsys.readouterr().err == f"error: unknown strategy 'nope'; valid strategies: {valid}\n"


def test_cli_process_exits_2_without_traceback() -> None:
    p = subprocess.run([sys.executable, "-m", "study.run", "--strategy", "bogus"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown strategy" in p.stderr


def test_presets_fill_in_only_what_was_not_given() -> None:
    cfg = config_from_args(build_parser().parse_args(["--smoke", "--trials", "5"]))
    assert cfg.budget.trials == 5 and cfg.budget.epochs == 2 and cfg.model_width == "tiny"
    cfg = config_from_args(build_parser().parse_args(["--demo"]))
    assert len(cfg.data.fractions) >= 3 and cfg.budget.trials >= 4 and cfg.budget.seeds >= 2
    cfg = config_from_args(build_parser().parse_args(["--epochs", "3"]))  # preset grace period adapts
    assert cfg.budget.grace_period <= 3


def test_strategies_run_one_at_a_time_share_the_study_and_keep_their_cells(tmp_path) -> None:
    """`--strategy indomain` then `--strategy indomain,crossdomain` is one study: same id and default folder,
    the same indomain cell ids; a setting only crossdomain reads changes crossdomain's cells only."""
    from study.data.subsets import make_subset
    from study.orchestration import cell_id
    from study.strategies import STRATEGIES

    def cfg(*argv: str):
        return config_from_args(build_parser().parse_args(["--smoke", *argv]))

    one, both = cfg("--strategy", "indomain"), cfg("--strategy", "indomain,crossdomain")
    assert one.study_id == both.study_id and one.runtime.results == both.runtime.results
    subset = make_subset("hyko2", [f"s{i}" for i in range(10)], [frozenset({1, 2})] * 10, 0.5, 0)
    assert cell_id(one, "indomain", subset) == cell_id(both, "indomain", subset)
    f16, f32 = both, cfg("--strategy", "indomain,crossdomain", "--feature-dtype", "float32")
    assert f16.study_id == f32.study_id and cell_id(f16, "indomain", subset) == cell_id(f32, "indomain", subset)
    assert cell_id(f16, "crossdomain", subset) != cell_id(f32, "crossdomain", subset)
    assert cfg("--epochs", "3").study_id != one.study_id  # the shared protocol still counts
    assert all(set(s.settings) <= set(one.settings()) for s in STRATEGIES.values())  # settings that exist
    # stores written before: their finished cells are still found under the old id
    assert cell_id(one, "indomain", subset, legacy=True) != cell_id(both, "indomain", subset, legacy=True)
    assert one.legacy_study_id.rsplit("-", 1)[-1] in cell_id(one, "indomain", subset, legacy=True)
    # study.json keeps each strategy's own settings across such runs (the report's backbone banner reads them)
    from study.orchestration import merged_strategy_settings
    from study.store import read_study_file, resolve, write_study_file

    store = resolve(tmp_path)
    assert merged_strategy_settings(read_study_file(store), one) == {"indomain": {}}
    write_study_file(tmp_path, {"strategy_settings": merged_strategy_settings(read_study_file(store), f32)})
    merged = merged_strategy_settings(read_study_file(store), one)
    assert merged["crossdomain"]["feature_dtype"] == "float32" and merged["indomain"] == {}


def test_local_ray_dashboard_is_off_by_default_and_bound_to_localhost(monkeypatch) -> None:
    import ray

    from study.orchestration import init_ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", raising=False)
    init_ray(config_from_args(build_parser().parse_args(["--smoke"])))
    assert seen["include_dashboard"] is False and seen["dashboard_host"] == "127.0.0.1"
    # trial workers: one malloc arena, and no GPU visible to a zero-GPU worker
    assert seen["runtime_env"] == {"env_vars": {"MALLOC_ARENA_MAX": "1", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}}
    init_ray(config_from_args(build_parser().parse_args(["--smoke", "--dashboard"])))
    assert seen["include_dashboard"] is True and seen["dashboard_host"] == "127.0.0.1"


def test_gpu_requests_follow_the_flag() -> None:
    from study.strategies import get_strategy

    assert get_strategy("indomain").resources(have_gpus=True) == {"cpu": 1.0, "gpu": 1.0}
    assert get_strategy("crossdomain-fc").resources(have_gpus=True)["gpu"] == 0.25
    assert "gpu" not in get_strategy("indomain").resources(have_gpus=False)
    with pytest.raises(SystemExit) as exc:  # argparse: one usage line naming the valid choices, exit 2
        build_parser().parse_args(["--gpus", "maybe"])
    assert exc.value.code == 2
