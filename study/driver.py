"""The study driver: cells -> Ray Tune -> rows in the Parquet store.

Inputs are prepared and validated before Ray starts (:mod:`study.inputs`).
Cells whose final rows are already in the store are skipped, so re-running the
same command continues a study. Nothing here names a strategy: what a cell
needs comes from its registry entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from study import __version__
from study.config import StudyConfig
from study.data.bundle import DataBundle, make_bundle
from study.data.specs import DatasetSpec
from study.data.subsets import SubsetManifest
from study.errors import HsiStudyError
from study.inputs import Prepared
from study.records import trial_rows
from study.replay import replay_from_rows, replay_or_train, trial_key
from study.results import STUDY_FILE, read_table, write_rows, write_study_file
from study.storage import Location, WorkingCopy, lease, open_results, resolve
from study.strategies import Strategy, get_strategy
from study.tuning import TrialLog, echo, final_runs, pick_best, tune_cell


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


def cell_bundle(prep: Prepared, strategy: Strategy, subset: SubsetManifest, space: dict[str, Any]) -> DataBundle:
    """A cell's data as its strategy's registry entry asks: raw cubes, or cached features (plus, when the
    search can unfreeze the backbone, the raw spectra of the same samples for k > 0 trials)."""
    if strategy.inputs != "features":
        return make_bundle(prep.spec, prep.splits, subset, prep.source)
    assert prep.feature_splits is not None, "prepare() exports features when a strategy needs them"
    backbone = prep.backbones.get(strategy.backbone or "")
    bundle = make_bundle(prep.spec, prep.feature_splits, subset, prep.source, backbone.sha if backbone else None)
    if getattr(space.get("freeze_depth"), "high", 0) > 0:  # capped at k = 0: no trial reads raw spectra
        bundle = replace(bundle, raw=make_bundle(prep.spec, prep.splits, subset, prep.source))
    return bundle


def _constants(cfg: StudyConfig, n_train: int, spec: DatasetSpec, cid: str, cpus: float) -> dict[str, Any]:
    """Per-trial settings that are not searched (identical across the cell's trials).

    ``cell_id`` and ``phase`` are part of every config so that a trial's content
    hash (``replay.trial_key``) identifies it across re-runs.
    """
    batch = cfg.budget.batch_size or spec.batch_size
    return {
        "cell_id": cid,
        "phase": "tune",
        "max_epochs": cfg.budget.epochs,
        "batch_size": min(batch, n_train),
        "width": cfg.model_width,
        "patience": cfg.budget.patience,
        "seed": 0,
        "final": False,
        "num_threads": max(1, int(cpus)),
    }


def _fresh_experiment(results: Location, name: str, journal: Any) -> None:
    """Drop what an interrupted attempt left of this experiment (its finished trials are in the store)."""
    import optuna

    results.delete_dir("tune", name)
    with contextlib.suppress(KeyError):  # KeyError: no such study yet
        optuna.delete_study(study_name=name, storage=journal)


def search_space(cfg: StudyConfig, strategy: Strategy) -> dict[str, Any]:
    """The strategy's search space, with ``freeze_depth`` capped at ``--max-freeze-depth`` when one is set.

    Why a cap rather than separate spaces: k > 0 puts the backbone into every
    training step (HyperSL per pixel: minutes per epoch on a laptop CPU), so the
    demo/smoke presets search frozen backbones only while a GPU cluster searches
    the strategy's full range; every cell of one study still gets the same space.
    """
    from optuna.distributions import IntDistribution

    space = strategy.load_search_space()
    dist = space.get("freeze_depth")
    cap = cfg.options.max_freeze_depth
    if cap is not None and isinstance(dist, IntDistribution) and dist.high > cap:
        space["freeze_depth"] = IntDistribution(dist.low, max(dist.low, cap), step=dist.step)
    return space


def run_cell(
    cfg: StudyConfig, prep: Prepared, strategy: Strategy, subset: SubsetManifest, cid: str,
    have_gpu: bool, echo: Callable[[str], None] = echo,
) -> None:
    """Tune one cell, re-train the winner with K seeds; every finished trial is stored at once."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from ray import tune

    results = resolve(cfg.runtime.results)
    stored = read_table(results)
    stored = stored.filter(pc.equal(stored["cell_id"], cid)).to_pylist() if stored.num_rows else []
    replay = replay_from_rows(stored)
    if replay:
        echo(f"  resuming: {len(replay)} finished trial(s) of this cell are replayed from the store")
    space = search_space(cfg, strategy)
    bundle = cell_bundle(prep, strategy, subset, space)
    res = strategy.resources(have_gpu)
    trainable = tune.with_resources(
        tune.with_parameters(replay_or_train, data=bundle, replay=replay, trainable_path=strategy.trainable), res
    )
    budget = cfg.budget
    constants = _constants(cfg, len(subset.names), prep.spec, cid, res["cpu"])
    backbone = prep.backbones.get(strategy.backbone) if strategy.backbone else None
    if backbone is not None:
        constants.update(backbone.trial_config)
    # Optuna's journal needs a local file: on an object store a working copy, pushed after every trial
    journal_file = WorkingCopy(results, "optuna.journal")
    common = {
        "study_id": cfg.study_id, "dataset": prep.spec.name, "strategy": strategy.name,
        "train_fraction": subset.fraction, "n_train_images": len(subset.names), "subset_hash": subset.content_hash,
        "subset_seed": subset.subset_seed, "cell_id": cid, "data_source": prep.source, "code_version": __version__,
        "backbone_hash": backbone.sha if backbone is not None else None,
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
    return {**previous, **{s: {k: settings[k] for k in get_strategy(s).settings} for s in cfg.strategies}}


def run_study(cfg: StudyConfig, prep: Prepared, echo: Callable[[str], None] = echo) -> list[str]:
    """Run every (strategy, fraction) cell not already finished; returns failure messages."""
    import ray

    results = resolve(cfg.runtime.results)
    done = finished_cells(results, cfg.budget.seeds)  # first: refuses a store of another schema version
    write_study_file(results, {"study_id": cfg.study_id, "settings": cfg.settings(), "data_root": str(prep.data_root),
                               "strategy_settings": strategy_settings(results, cfg)})
    gpus = cfg.runtime.gpus
    have_gpu = gpus == "on" or (gpus == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    if gpus == "auto" and not have_gpu and cfg.runtime.address:
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
