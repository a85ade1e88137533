"""``python -m study.run``: run a data-efficiency study (the one launcher, locally or on a cluster)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from study.config import PRESETS, StudyConfig, build_config
from study.config.flags import build_parser, parse_datasets
from study.data.subsets import parse_fractions
from study.data.synthetic.generator import GeneratorConfig
from study.errors import ConfigError, HsiStudyError
from study.orchestration import init_ray, sweep_node_copies
from study.progress import RESUME_HINT, StopSignals, kill_children
from study.store import check_writable, disk_full_error, is_disk_full, quarantine_corrupt_parts, resolve
from study.strategies import get_strategy, parse_strategies


def _synthetic(args: argparse.Namespace, preset: str) -> GeneratorConfig | None:
    if args.synthetic_size is None and args.synthetic_images is None:
        return None
    base = PRESETS[preset].get("synthetic", GeneratorConfig())
    h, w, n = base.height, base.width, (base.n_train, base.n_val, base.n_test)
    try:
        if args.synthetic_size:
            h, w = (int(v) for v in args.synthetic_size.lower().split("x"))
        if args.synthetic_images:
            n = tuple(int(v) for v in args.synthetic_images.split(","))
            if len(n) != 3:
                raise ValueError
    except ValueError:
        raise ConfigError("--synthetic-size wants HxW (e.g. 64x128) and --synthetic-images train,val,test "
                          "(e.g. 40,12,16)") from None
    if min(h, w, *n) < 1:
        raise ConfigError(f"synthetic sizes and counts must be >= 1, got {h}x{w} and {n}")
    return GeneratorConfig(height=h, width=w, n_train=n[0], n_val=n[1], n_test=n[2], seed=base.seed)


def _model_sizes(cfg: StudyConfig) -> str:
    """The header's model note: what each chosen strategy's registry entry says it trains."""
    parts = list(dict.fromkeys(n for s in cfg.strategies if (n := get_strategy(s).describe_model(cfg))))
    if cfg.options.max_freeze_depth is not None and cfg.backbone_kinds():
        parts.append(f"freeze depth <= {cfg.options.max_freeze_depth}")
    return "; " + ", ".join(parts) if parts else ""


def _protocol_note(cfg: StudyConfig) -> str:
    """The header's protocol note: the paper recipe, and every deviation from it when there are any."""
    if cfg.protocol != "paper":
        return ""
    if cfg.deviations:
        return (f"; protocol {cfg.protocol_label}: the published recipe, no search, with deviations "
                f"{';'.join(cfg.deviations)} (--allow-deviations)")
    return "; protocol paper: the published recipe, no search"


def _placement_note(placement: str) -> str:
    """The header's data-placement line (the rule ``auto`` follows is ``study.data.placement.choose``)."""
    if placement != "auto":
        return f"data placement: {placement} (--data-placement)"
    return ("data placement: auto (device when a trial's splits fit its GPU share with room for the model, else one "
            "shared host copy per node when they fit its memory, else streamed from the files; each cell says which)")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """Flags -> a validated StudyConfig (ConfigError on anything invalid)."""
    preset = "smoke" if args.smoke else "demo" if args.demo else "full"
    try:
        strategies = parse_strategies(args.strategy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    datasets = parse_datasets(args.dataset)
    width = args.width
    if width is not None and width.strip().lstrip("-").isdigit():
        width = int(width)
    grace = args.grace_period
    if grace is None and args.epochs is not None:  # a short --epochs shrinks the preset's grace period
        grace = min(PRESETS[preset]["grace_period"], max(1, args.epochs // 3))
    given = dict(
        strategies=strategies,
        dataset=datasets,
        fractions=parse_fractions(args.fractions) if args.fractions is not None else None,
        trials=args.trials, epochs=args.epochs, seeds=args.seeds, subset_seed=args.subset_seed,
        grace_period=grace, reduction_factor=args.reduction_factor, patience=args.patience,
        width=width, batch_size=args.batch_size, data_root=args.data_root, cache_dir=args.cache_dir,
        synthetic=_synthetic(args, preset), address=args.address, num_cpus=args.num_cpus,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        max_concurrent_cells=args.max_concurrent_cells, stage_data=args.stage_data, compile=args.compile or None,
        loader_memory_gib=args.loader_memory_gib, data_placement=args.data_placement,
        backbone=args.backbone, bn_mode=args.bn_mode, feature_dtype=args.feature_dtype,
        features=args.features,
        gpus=args.gpus, dashboard=args.dashboard, dashboard_host=args.dashboard_host,
        rgb_weights=args.rgb_weights, allow_random_init=args.allow_random_init or None, vit_size=args.vit_size,
        max_freeze_depth=args.max_freeze_depth, log_to=args.log_to,
        deterministic=args.deterministic, search_batch=args.search_batch,
        search_spaces=getattr(args, "search_spaces", None),
    )
    allow = bool(getattr(args, "allow_deviations", False))
    cfg = build_config(preset, args.protocol, allow, **given, results=args.results or Path("results"))
    if args.results is None:  # default folder named by the study id, which the settings above determine
        cfg = build_config(preset, args.protocol, allow, **given, results=Path("results") / cfg.study_id)
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over ``--config`` over presets: the file's settings become the parser's defaults, its search
    spaces ride along as ``args.search_spaces`` (ConfigError for a bad file, before Ray)."""
    from study.config import load, parser_defaults
    from study.search import resolve_spaces

    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    path = pre.parse_known_args(argv)[0].config
    if path is None:
        return parser.parse_args(argv)
    settings, spaces = load(path)
    parser.set_defaults(**parser_defaults(parser, settings, path))
    args = parser.parse_args(argv)
    args.search_spaces = resolve_spaces(spaces, path)
    return args


def effective_config(cfg: StudyConfig, fmt: str = "toml") -> str:
    """``--print-config``: the settings under their flag names plus every chosen strategy's effective space."""
    import json

    from study.config import to_toml
    from study.search import search_space, space_specs

    s = cfg.settings()
    syn = cfg.data.synthetic
    out = {"strategy": list(cfg.strategies), "protocol": cfg.protocol, "smoke": cfg.preset == "smoke",
           "demo": cfg.preset == "demo"}
    dests = [a.dest for a in build_parser()._actions]
    renamed = {"strategy", "protocol", "smoke", "demo", "synthetic_size", "synthetic_images"}
    out.update({d: s[d] for d in dests if d in s and d not in renamed})
    if cfg.allow_deviations:
        out["allow_deviations"] = True
    out["log_to"] = list(cfg.runtime.log_to)
    if cfg.data.data_root is None:
        out.update(synthetic_size=f"{syn.height}x{syn.width}", synthetic_images=[syn.n_train, syn.n_val, syn.n_test])
    spaces = {name: space_specs(search_space(cfg, get_strategy(name))) for name in cfg.strategies}
    if fmt == "json":
        return json.dumps({"settings": out, "search_space": spaces}, indent=2, default=str)
    return to_toml(out, spaces)


def main(argv: list[str] | None = None, *, own_process: bool = True) -> int:
    """The command; ``own_process=False`` (:func:`study.api.run_study`, a notebook's kernel): a second Ctrl+C
    does not end the process."""
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGINT and SIGTERM: stop, keep what finished; a second one ends the process at once (if it is ours)
    stop = StopSignals(RESUME_HINT, hard_stop=kill_children, at_once=own_process, keep=own_process)
    try:
        with stop:
            return _main(args)
    except (HsiStudyError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(RESUME_HINT, file=sys.stderr)
        return 130


def run_until_disk_full(cfg: StudyConfig, preps: dict) -> list[str]:
    """:func:`run_pending_cells`, with a full disk under ``tune/`` said in one line (Tune's checkpoints fill it
    first: its writes then fail with OSError, or EOFError reading a truncated file) instead of its tracebacks."""
    from study.orchestration import run_pending_cells

    loc = resolve(cfg.runtime.results)
    tune = loc.local("tune") if loc.is_local else None
    try:
        return run_pending_cells(cfg, preps)
    except HsiStudyError:
        raise
    except (OSError, EOFError, RuntimeError) as exc:
        if not is_disk_full(exc, tune if tune is not None and tune.exists() else None):
            raise
        raise disk_full_error(loc.show("tune")) from exc


def _main(args: argparse.Namespace) -> int:
    from study.orchestration import check_inputs
    from study.report import print_summary
    from study.store import results_lock

    t0 = time.perf_counter()
    cfg = config_from_args(args)
    if args.print_config:
        print(effective_config(cfg, args.print_config), end="")
        return 0
    b = cfg.budget
    print(f"study {cfg.study_id}: {', '.join(cfg.strategies)} on {', '.join(cfg.data.datasets)}, fractions "
          f"{', '.join(f'{f:g}' for f in cfg.data.fractions)}; {b.trials} trials x <= {b.epochs} epochs per cell, "
          f"{b.seeds} final seed(s){_model_sizes(cfg)}; "
          + (f"deterministic (proposals in waves of {b.proposal_batch}, ASHA in trial order)" if b.deterministic
             else "asynchronous search (results may vary with timing)")
          + _protocol_note(cfg))
    print(_placement_note(cfg.runtime.data_placement))
    check_writable(cfg.runtime.results)  # a file, under a file, read-only, a full disk: one line, before any work
    if cfg.runtime.log_to:
        from study.orchestration import tracking_dir

        folder, note = tracking_dir(cfg)
        print(note or f"logging to {', '.join(cfg.runtime.log_to)} (local files under {folder})")
    with results_lock(cfg.runtime.results):  # before anything is written: one writer per results location
        if args.repair:
            for moved in quarantine_corrupt_parts(cfg.runtime.results):
                print(f"unreadable part moved to {moved}; its trial is trained again")
        if cfg.runtime.address or os.environ.get("RAY_ADDRESS"):
            init_ray(cfg)  # a running cluster: connecting is cheap, and the feature export runs on it
        preps = check_inputs(cfg, allow_extreme_values=args.allow_extreme_values)
        init_ray(cfg)
        failures = run_until_disk_full(cfg, preps)
        sweep_node_copies()  # the shared host copies of --data-placement memory no trial holds any more
        print_summary(cfg.runtime.results)
    loc = resolve(cfg.runtime.results)
    print(f"\nresults: {loc.name_of(loc.path('rows', '*.parquet'))}  ({time.perf_counter() - t0:.0f} s in all)")
    if failures:
        print("failed cells:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
