"""The study driver: data -> subsets -> cells -> Ray Tune -> rows in the Parquet store.

Everything that can be wrong with the input (flags, files, fractions) is
checked in :func:`prepare` before Ray starts. Cells whose final rows are already
in the store are skipped, so re-running the same command continues a study.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from study import __version__
from study.config import STRATEGY_SETTINGS, StudyConfig
from study.data.bundle import DataBundle, make_bundle
from study.data.generator import ensure_default_dataset
from study.data.h5reader import H5Split, validate_dataset
from study.data.specs import DatasetSpec, get_spec
from study.data.subsets import SubsetManifest, make_subset
from study.errors import HsiStudyError
from study.replay import replay_from_rows, replay_or_train, trial_key
from study.results import STUDY_FILE, check_store_version, read_table, write_rows, write_study_file
from study.storage import Location, WorkingCopy, lease, open_results, resolve
from study.strategies import Strategy, get_strategy
from study.tuning import Budget, TrialLog, config_hash, echo, final_runs, pick_best, tune_cell

if TYPE_CHECKING:
    from study.models.vit_weights import RgbBackbone


@dataclass(frozen=True)
class Prepared:
    """Validated inputs of a study: the spec, open splits, one subset manifest per fraction."""

    spec: DatasetSpec
    data_root: Path
    source: str
    splits: dict[str, H5Split]
    subsets: dict[float, SubsetManifest]
    feature_splits: dict[str, H5Split] | None = None  # frozen-backbone features, same samples as ``splits``
    backbone_hash: str | None = None
    rgb: RgbBackbone | None = None  # the crossmodality ViT and its weights, when that strategy runs
    backbone_path: Path | None = None  # the HyperSL checkpoint: trials with freeze depth k > 0 load its weights


def prepare(cfg: StudyConfig, echo: Callable[[str], None] = echo) -> Prepared:
    """Resolve and validate data and subsets; write manifests. No Ray, no training."""
    results = resolve(cfg.results)
    check_store_version(results)  # before anything is written into an incompatible store
    spec = get_spec(cfg.dataset)
    if cfg.data_root is not None:
        root, source = Path(cfg.data_root), str(Path(cfg.data_root).resolve())
    else:
        t0 = time.perf_counter()
        root = ensure_default_dataset(spec, cfg.cache_dir, cfg.synthetic, progress=True)
        source = f"synthetic:{root.name}"
        echo(f"embedded default data: synthetic {spec.title}-like cubes in {root} ({time.perf_counter() - t0:.1f} s)")
    splits = validate_dataset(root, spec)
    train = splits["train"]
    subsets = {
        f: make_subset(spec.name, train.names, train.classes_present(), f, cfg.subset_seed) for f in cfg.fractions
    }
    for f, m in subsets.items():
        results.write_text(f"manifests/{spec.name}-f{f:g}-s{cfg.subset_seed}-{m.content_hash}.json", m.to_json())
    rgb = prepare_rgb(cfg, echo) if "crossmodality" in cfg.strategies else None  # cheap: before any export
    feature_splits, backbone_hash, backbone_path = (prepare_features(cfg, spec, root, echo) if cfg.needs_features
                                                    else (None, None, None))
    return Prepared(spec, root, source, splits, subsets, feature_splits, backbone_hash, rgb, backbone_path)


def prepare_rgb(cfg: StudyConfig, echo: Callable[[str], None]) -> RgbBackbone:
    """Find and check the crossmodality ViT weights now, so a missing or wrong file stops before Ray starts."""
    from study.models.vit_weights import resolve_rgb_backbone

    rgb = resolve_rgb_backbone(cfg.rgb_weights, cfg.vit_size, cfg.allow_random_init, cfg.rgb_default_size)
    echo(f"crossmodality backbone: {rgb.describe()}")
    return rgb


def prepare_features(
    cfg: StudyConfig, spec: DatasetSpec, root: Path, echo: Callable[[str], None]
) -> tuple[dict[str, H5Split], str, Path]:
    """Per-pixel HyperSL features of every split, computed at most once per (backbone, data, settings),
    their backbone's hash and checkpoint path.

    The frozen backbone's features are the expensive part of the crossdomain
    strategies (design.md §6): the cache makes every trial of every cell reuse them.
    """
    import torch

    from study.data.generator import default_cache_dir
    from study.features import ensure_features
    from study.models.checkpoints import checkpoint_hash
    from study.pretrain import default_config, ensure_default_backbone

    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.backbone is not None:
        backbone = Path(cfg.backbone)
    else:
        t0 = time.perf_counter()
        smoke = cfg.preset == "smoke"  # --smoke: a seconds-long pretraining (plumbing, not quality)
        backbone = ensure_default_backbone(cache_dir=cache, config=default_config("cpu", smoke=smoke), progress=True)
        echo(f"backbone: locally pretrained HyperSL ({backbone}, {time.perf_counter() - t0:.0f} s); a small-scale "
             "sanity pretraining, not the released weights")
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = ensure_features(cache, backbone, root, spec.name, bn_mode=cfg.bn_mode,
                             dtype=cfg.feature_dtype, device=device, progress=True)
    echo(f"features: {folder} (bn mode {cfg.bn_mode}, {cfg.feature_dtype}; {time.perf_counter() - t0:.1f} s)")
    return validate_dataset(folder, spec), checkpoint_hash(backbone), backbone


def with_backbone_inputs(bundle: DataBundle, prep: Prepared, bn_mode: str, subset: SubsetManifest) -> DataBundle:
    """A feature bundle plus what its trials need for freeze depth k > 0: raw spectra of the same samples and
    the backbone's weights (``study.train.unfrozen``); k = 0 trials ignore them."""
    from study.features import default_chunk
    from study.train.unfrozen import backbone_inputs

    if prep.backbone_path is None:
        return bundle
    raw = make_bundle(prep.spec, prep.splits, subset, prep.source)
    return replace(bundle, backbone=backbone_inputs(prep.backbone_path, raw, bn_mode, default_chunk(prep.spec.name)))


def budget_of(cfg: StudyConfig) -> Budget:
    return Budget(
        trials=cfg.trials,
        max_epochs=cfg.epochs,
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        final_seeds=cfg.seeds,
        max_concurrent=cfg.max_concurrent,
        max_failures=cfg.max_failures,
    )


def cell_id(cfg: StudyConfig, strategy: str, subset: SubsetManifest, legacy: bool = False) -> str:
    """Stable id of a cell: strategy + subset + the settings that strategy's results depend on (so a re-run,
    or a later run with more strategies, finds its rows). ``legacy``: the id stores written before the
    strategy list left the study id used (recognised as finished, never written)."""
    key = cfg.legacy_study_id.rsplit("-", 1)[-1] if legacy else cfg.strategy_key(strategy)
    return f"{strategy}-f{subset.fraction:g}-{subset.content_hash[:8]}-{key}"


def finished_cells(results: Path | Location, final_seeds: int) -> set[str]:
    """Cells that already have all their final rows in the store."""
    table = read_table(results)
    if table.num_rows == 0:
        return set()
    finals = table.filter(pc.equal(table["row_kind"], "final"))
    counts: dict[str, int] = {}
    for c in finals["cell_id"].to_pylist():
        counts[c] = counts.get(c, 0) + 1
    return {c for c, n in counts.items() if n >= final_seeds}


def _constants(cfg: StudyConfig, n_train: int, spec: DatasetSpec, cid: str, cpus: float) -> dict[str, Any]:
    """Per-trial settings that are not searched (identical across the cell's trials).

    ``cell_id`` and ``phase`` are part of every config so that a trial's content
    hash (``replay.trial_key``) identifies it across re-runs.
    """
    batch = cfg.batch_size or spec.batch_size
    return {
        "cell_id": cid,
        "phase": "tune",
        "max_epochs": cfg.epochs,
        "batch_size": min(batch, n_train),
        "width": cfg.model_width,
        "patience": cfg.patience,
        "seed": 0,
        "final": False,
        "num_threads": max(1, int(cpus)),
    }


def trial_rows(log: TrialLog, common: dict[str, Any]) -> list[dict[str, Any]]:
    """One trial's log -> result rows: one per epoch plus its summary (``trial`` or ``final``) row."""
    cfg = dict(log.config)
    phase = str(cfg.get("phase", "tune"))
    base = {
        **common,
        "phase": phase,
        "trial_id": f"{common['cell_id']}-{phase}-{log.trial_id}",
        "config_hash": config_hash({k: v for k, v in cfg.items() if k not in ("seed", "phase", "final")}),
        "seed": int(cfg.get("seed", 0)),
        "max_epochs": int(cfg.get("max_epochs", 0)),
        **{k: cfg.get(k) for k in ("lr", "weight_decay", "dropout", "head_lr", "backbone_lr", "freeze_depth",
                                   "batch_size")},
        "config_json": json.dumps(cfg, sort_keys=True, default=str),
    }
    rows = [{**base, **_metric_cols(r, with_test=False), "row_kind": "epoch", "status": "ok",
             "epoch": r["epoch"], "epochs_run": r["epoch"]} for r in log.results]
    best, last = log.best, (log.results[-1] if log.results else {})
    summary = {**base, "row_kind": "trial" if phase == "tune" else "final", "status": log.status,
               "epochs_run": last.get("epoch", 0), "error": log.error}
    if best is not None:
        summary.update(_metric_cols(best, with_test=False))
        summary["epoch"] = best["epoch"]
    if phase == "final":
        summary.update(_metric_cols(last, with_test=True, only_test=True))
    summary.update({"wall_s": last.get("wall_s"), "device_s": last.get("device_s"), "node_id": last.get("node_id")})
    return [*rows, summary]


def _metric_cols(r: dict[str, Any], with_test: bool, only_test: bool = False) -> dict[str, Any]:
    keys = [] if only_test else ["train_loss", "val_miou", "val_oa", "val_macc", "val_macro_f1", "val_iou_per_class",
                                 "wall_s", "device_s", "device", "node_id", "n_params", "model_name",
                                 "backbone_hash", "backbone_pretrained"]
    if with_test:
        keys += ["test_miou", "test_oa", "test_macc", "test_macro_f1", "test_iou_per_class"]
    return {k: r.get(k) for k in keys if r.get(k) is not None}


def _fresh_experiment(results: Location, name: str, journal: Any) -> None:
    """Drop what an interrupted attempt left of this experiment (its finished trials are in the store)."""
    import optuna

    results.delete_dir("tune", name)
    with contextlib.suppress(KeyError):  # KeyError: no such study yet
        optuna.delete_study(study_name=name, storage=journal)


def search_space(cfg: StudyConfig, strategy: Strategy) -> dict[str, Any]:
    """The strategy's search space, with ``freeze_depth`` capped at ``cfg.max_freeze_depth`` when one is set.

    Why a cap rather than separate spaces: k > 0 puts the backbone into every
    training step (HyperSL per pixel: minutes per epoch on a laptop CPU), so the
    demo/smoke presets search frozen backbones only while a GPU cluster searches
    the strategy's full range; every cell of one study still gets the same space.
    """
    from optuna.distributions import IntDistribution

    space = strategy.load_search_space()
    dist = space.get("freeze_depth")
    if cfg.max_freeze_depth is not None and isinstance(dist, IntDistribution) and dist.high > cfg.max_freeze_depth:
        space["freeze_depth"] = IntDistribution(dist.low, max(dist.low, cfg.max_freeze_depth), step=dist.step)
    return space


def run_cell(
    cfg: StudyConfig, prep: Prepared, strategy: Strategy, subset: SubsetManifest, cid: str,
    have_gpu: bool, echo: Callable[[str], None] = echo,
) -> None:
    """Tune one cell, re-train the winner with K seeds; every finished trial is stored at once."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from ray import tune

    results = resolve(cfg.results)
    stored = read_table(results)
    stored = stored.filter(pc.equal(stored["cell_id"], cid)).to_pylist() if stored.num_rows else []
    replay = replay_from_rows(stored)
    if replay:
        echo(f"  resuming: {len(replay)} finished trial(s) of this cell are replayed from the store")
    space = search_space(cfg, strategy)
    if strategy.inputs == "features":
        assert prep.feature_splits is not None, "prepare() computes features when a strategy needs them"
        bundle = make_bundle(prep.spec, prep.feature_splits, subset, prep.source, prep.backbone_hash)
        if getattr(space.get("freeze_depth"), "high", 0) > 0:  # capped at k = 0: no trial reads raw spectra
            bundle = with_backbone_inputs(bundle, prep, cfg.bn_mode, subset)
    else:
        bundle = make_bundle(prep.spec, prep.splits, subset, prep.source)
    res = strategy.resources(have_gpu)
    trainable = tune.with_resources(
        tune.with_parameters(replay_or_train, data=bundle, replay=replay, trainable_path=strategy.trainable), res
    )
    budget = budget_of(cfg)
    constants = _constants(cfg, len(subset.names), prep.spec, cid, res["cpu"])
    if strategy.name == "crossmodality" and prep.rgb is not None:  # other strategies' configs stay as they were
        constants.update(prep.rgb.trial_config())
    # Optuna's journal needs a local file: on an object store a working copy, pushed after every trial
    journal_file = WorkingCopy(results, "optuna.journal")
    common = {
        "study_id": cfg.study_id, "dataset": prep.spec.name, "strategy": strategy.name,
        "train_fraction": subset.fraction, "n_train_images": len(subset.names), "subset_hash": subset.content_hash,
        "subset_seed": subset.subset_seed, "cell_id": cid, "data_source": prep.source, "code_version": __version__,
        "backbone_hash": prep.rgb.sha if strategy.name == "crossmodality" and prep.rgb else bundle.backbone_hash,
    }

    def store(log: TrialLog) -> None:
        if trial_key(log.config) not in replay:
            write_rows(results, trial_rows(log, common), f"{cid}-{log.config.get('phase', 'tune')}")
        if log.config.get("phase", "tune") == "tune":
            journal_file.push()

    label = f"{strategy.name} {subset.fraction:g}"
    with contextlib.closing(journal_file):  # pushed once more (and its temp folder removed) however the cell ends
        journal = JournalStorage(JournalFileBackend(str(journal_file.pull().path.resolve())))
        try:
            _fresh_experiment(results, f"{cid}-tune", journal)
            logs = tune_cell(trainable, space, constants, budget, results.child("tune"),
                             f"{cid}-tune", journal, label, echo, on_finish=store)
        finally:
            journal_file.push()
    best = pick_best(logs)
    chosen = {k: v for k, v in best.config.items() if k not in ("seed", "final", "phase")}
    echo(f"  [{label}] best config: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in chosen.items() if k in space))
    results.delete_dir("tune", f"{cid}-final")
    final_runs(trainable, chosen, budget, results.child("tune"), f"{cid}-final", label, echo, on_finish=store)


@contextlib.contextmanager
def results_lock(results: Path | str | Location) -> Iterator[None]:
    """One writer per results location: a second ``study.run`` stops with a clear message.

    A local folder gets an fcntl lock (released by the kernel when the holder dies); an object store,
    which has no locks, a renewed lease object (``storage.lease``: best effort, see there). Resolving
    and probing the location here makes a bad URI, a missing bucket or missing credentials fail with
    one line before anything is prepared or trained.
    """
    loc = open_results(results)
    if not loc.is_local:
        with lease(loc):
            yield
        return
    folder = loc.local()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole study
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise HsiStudyError(
            f"{loc.show()} is in use by another study.run ({holder}); wait for it to finish or use another --results"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def strategy_settings(results: Location, cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """Per strategy, the strategy-specific settings it last ran with, kept across runs of the same study.

    Strategies can be run one at a time into one study, and ``settings`` in
    study.json is the latest run's: the report reads this record to say, e.g.,
    which HyperSL strategies used the local sanity backbone.
    """
    try:
        previous = json.loads(results.read_text(STUDY_FILE)).get("strategy_settings") or {}
    except (FileNotFoundError, ValueError, AttributeError):
        previous = {}
    settings = cfg.settings()
    return {**previous, **{s: {k: settings[k] for k in STRATEGY_SETTINGS[s]} for s in cfg.strategies}}


def run_study(cfg: StudyConfig, prep: Prepared, echo: Callable[[str], None] = echo) -> list[str]:
    """Run every (strategy, fraction) cell not already finished; returns failure messages."""
    import ray

    results = resolve(cfg.results)
    done = finished_cells(results, cfg.seeds)  # first: refuses a store of another schema version
    write_study_file(results, {"study_id": cfg.study_id, "settings": cfg.settings(), "data_root": str(prep.data_root),
                               "strategy_settings": strategy_settings(results, cfg)})
    have_gpu = cfg.gpus == "on" or (cfg.gpus == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    if cfg.gpus == "auto" and not have_gpu and cfg.address:
        echo("note: no GPU in the cluster yet, trials request CPU only; use --gpus on to make an autoscaling "
             "cluster start GPU workers")
    cells = [(s, f) for s in cfg.strategies for f in sorted(prep.subsets)]
    failures: list[str] = []
    for i, (sname, frac) in enumerate(cells, 1):
        strategy, subset = get_strategy(sname), prep.subsets[frac]
        cid = cell_id(cfg, sname, subset)
        if cid in done or cell_id(cfg, sname, subset, legacy=True) in done:
            echo(f"[{i}/{len(cells)}] {sname} @ {frac:g}: already finished, skipped")
            continue
        echo(f"[{i}/{len(cells)}] {sname} @ {frac:g} ({len(subset.names)} of {subset.n_total} train images, "
             f"subset {subset.content_hash[:8]})")
        t0 = time.perf_counter()
        try:
            run_cell(cfg, prep, strategy, subset, cid, have_gpu, echo)
        except RuntimeError as exc:  # every trial failed: record and go on with the next cell
            failures.append(f"{sname} @ {frac:g}: {exc}")
            echo(f"  cell failed: {exc}")
        echo(f"  cell done in {time.perf_counter() - t0:.0f} s")
    return failures
