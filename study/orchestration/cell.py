"""One cell of a study: its id, its data, its Tuner (search, then K final seeds), its rows.

The driver (:mod:`study.orchestration.driver`) runs many cells at once, each in its own
thread; everything here concerns one cell and reads what it needs from the
cell's strategy entry, never its name.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from study import progress
from study.config import StudyConfig
from study.data.bundle import DataBundle, make_bundle
from study.data.specs import DatasetSpec
from study.data.subsets import SubsetManifest
from study.errors import HsiStudyError, ResultsWriteError
from study.hashing import json_digest
from study.orchestration.inputs import PreparedDataset
from study.orchestration.plan import cell_label
from study.orchestration.ray_setup import cpus_per_gpu
from study.orchestration.trackers import tracker_callbacks
from study.progress import echo
from study.provenance import code_version
from study.search import recipe_point, search_space
from study.search.deterministic import ordered_search
from study.search.replay import replay_or_train, trial_key
from study.search.tuning import TUNE_NEXT, final_runs, pick_best, serialized_start, tune_cell
from study.store import (
    Location,
    TrialLog,
    WorkingCopy,
    disk_full_error,
    is_disk_full,
    read_table,
    replay_from_rows,
    resolve,
    trial_rows,
    write_rows,
)
from study.strategies import Strategy


def cell_bundle(prep: PreparedDataset, strategy: Strategy, subset: SubsetManifest, space: dict[str, Any]) -> DataBundle:
    """A cell's data as its strategy's registry entry asks: raw cubes, or cached features (plus, when the
    search can unfreeze the backbone, the raw spectra of the same samples for k > 0 trials), or, when its trials
    compute the features (:func:`computes_features`), the raw spectra as both."""
    if strategy.inputs != "features":
        return make_bundle(prep.spec, prep.splits, subset, prep.source)
    backbone = prep.backbones.get(strategy.backbone or "")
    if computes_features(prep, strategy):  # no feature files: every trial runs the backbone on the raw spectra
        raw = make_bundle(prep.spec, prep.splits, subset, prep.source)
        return replace(raw, backbone_hash=backbone.sha if backbone else None, raw=raw)
    assert prep.feature_splits is not None, "prepare() exports features when a strategy needs them"
    bundle = make_bundle(prep.spec, prep.feature_splits, subset, prep.source, backbone.sha if backbone else None)
    if getattr(space.get("freeze_depth"), "high", 0) > 0:  # capped at k = 0: no trial reads raw spectra
        bundle = replace(bundle, raw=make_bundle(prep.spec, prep.splits, subset, prep.source))
    return bundle


def computes_features(prep: PreparedDataset, strategy: Strategy) -> bool:
    """Whether the cell's k = 0 trials compute their features (``--features compute``, or ``auto`` so decided)."""
    return strategy.inputs == "features" and prep.feature_plan is not None and prep.feature_plan.mode == "compute"


def trial_constants(cfg: StudyConfig, n_train: int, spec: DatasetSpec, cid: str, cpus: float) -> dict[str, Any]:
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
        # runtime options enter a config only when set, so that trial keys (resume) stay as they were
        **({"compile": True} if cfg.runtime.compile else {}),
        **({"stage_dir": str(cfg.runtime.stage_data)} if cfg.runtime.stage_data else {}),
        **({"loader_memory_gib": cfg.runtime.loader_memory_gib} if cfg.runtime.loader_memory_gib else {}),
        # not part of a trial's identity either way (store.records.RUNTIME_KEYS): every placement trains alike
        **({"data_placement": cfg.runtime.data_placement} if cfg.runtime.data_placement != "auto" else {}),
        **({"deterministic": True} if cfg.budget.deterministic else {}),  # CUDA: deterministic kernels
    }


def _fresh_experiment(results: Location, name: str, journal: Any) -> None:
    """Drop what an interrupted attempt left of this experiment (its finished trials are in the store)."""
    import optuna

    results.delete_dir("tune", name)
    with contextlib.suppress(KeyError):  # KeyError: no such study yet
        optuna.delete_study(study_name=name, storage=journal)


class CellInterrupted(HsiStudyError):
    """The study was asked to stop while this cell ran: what finished is stored, the cell is not finished."""


def cell_trainable(strategy: Strategy, bundle: DataBundle, replay: dict[str, Any], res: dict[str, float],
                   rank: int, cid: str) -> Any:
    """The cell's Tune trainable: the strategy's trainable wrapped to replay finished trials, with its data and
    per-trial resources, registered under a name of its own."""
    from ray import tune

    with serialized_start((TUNE_NEXT, rank)):  # with_parameters registers in Tune's (not thread-safe) registry
        trainable = tune.with_resources(
            tune.with_parameters(replay_or_train, data=bundle, replay=replay, strategy=strategy), res
        )
    # Tune registers a trainable under its name, process-wide: cells running at once must not share one, or
    # the last registered cell's data would reach every cell's trials
    trainable._name = f"cell_{json_digest(cid, 12)}"
    return trainable


def cell_constants(cfg: StudyConfig, prep: PreparedDataset, strategy: Strategy, subset: SubsetManifest, cid: str,
                   cpus: float, recipe: dict[str, Any]) -> dict[str, Any]:
    """Everything a trial of this cell gets besides its searched hyperparameters (under ``--protocol paper``
    the published recipe verbatim, batch sizes included)."""
    constants = trial_constants(cfg, len(subset.names), prep.spec, cid, cpus)
    backbone = prep.backbones.get(strategy.backbone) if strategy.backbone else None
    if backbone is not None:
        constants.update(backbone.trial_config)
    if computes_features(prep, strategy):  # only then: the trial keys of cache cells stay as they were
        assert prep.feature_plan is not None
        constants.update(prep.feature_plan.trial_config)
    if cfg.runtime.stage_data is not None:  # trials copy their inputs to node-local disk first (replay_or_train)
        constants["stage_hashes"] = dict(prep.stage_hashes)
    if cfg.protocol == "paper":
        constants.update(recipe)
        if "batch_size" in recipe:
            constants["batch_size"] = min(int(recipe["batch_size"]), len(subset.names))
        if cfg.budget.batch_size is not None:  # a deviation (--allow-deviations): the flag replaces the recipe's
            constants["batch_size"] = min(cfg.budget.batch_size, len(subset.names))
            if "images_per_batch" in recipe:
                constants["images_per_batch"] = constants["batch_size"]
    return constants


def row_identity(cfg: StudyConfig, prep: PreparedDataset, strategy: Strategy, subset: SubsetManifest,
                 cid: str) -> dict[str, Any]:
    """The columns every row of this cell carries besides the run's own (identity and provenance)."""
    backbone = prep.backbones.get(strategy.backbone) if strategy.backbone else None
    return {
        "study_id": cfg.study_id, "dataset": prep.spec.name, "strategy": strategy.name,
        "train_fraction": subset.fraction, "n_train_images": len(subset.names), "subset_hash": subset.content_hash,
        "subset_seed": subset.subset_seed, "cell_id": cid, "data_source": prep.source, "code_version": code_version(),
        "backbone_hash": backbone.sha if backbone is not None else None,
        "deviations": ";".join(cfg.deviations) or None,
        # feature strategies: where their k = 0 trials got the features (--features); null for the others
        "features_mode": (prep.feature_plan.mode if strategy.inputs == "features" and prep.feature_plan is not None
                          else None),
    }


@dataclass
class RowWriter:
    """Stores every finished trial of a cell the moment it ends (Tune's on-finish callback)."""

    cfg: StudyConfig
    results: Location
    cid: str
    common: dict[str, Any]
    replay: dict[str, Any]
    journal_file: WorkingCopy
    control_key: str | None
    recipe_trial: dict[str, Any] | None
    failed: list[ResultsWriteError] = field(default_factory=list)  # the first failed write (read-only, full disk)

    def __call__(self, log: TrialLog) -> None:
        # once the study is asked to stop, only runs that ended on their own are results: a trial ended by
        # the stop (or killed by the same Ctrl+C) is not "stopped early" or "failed", it trains again on resume
        if self.failed or (progress.stopped(self.control_key) and log.status != "completed"):
            return
        tune = self.results.local("tune") if self.results.is_local else None
        if log.status == "error" and is_disk_full(log.error, tune):
            # not the trial's fault: it is not stored (it trains again on resume) and the study stops, in one line
            self.failed.append(disk_full_error(self.results.show("tune")))
            if (control := progress.control(self.control_key)) is not None:
                control.stop.set()
            return
        try:
            if trial_key(log.config) not in self.replay:
                protocol = _protocol_of(self.cfg, log, self.recipe_trial)
                write_rows(self.results, trial_rows(log, {**self.common, "protocol": protocol}),
                           f"{self.cid}-{log.config.get('phase', 'tune')}")
            if log.config.get("phase", "tune") == "tune":
                self.journal_file.push()
        except ResultsWriteError as exc:  # raised in Tune's callback it would loop; stop the study, raise it once
            self.failed.append(exc)
            if (control := progress.control(self.control_key)) is not None:
                control.stop.set()

    def raise_failure(self) -> None:
        """Raise the first failed write once Tune has returned."""
        if self.failed:
            raise self.failed[0]


def run_cell(
    cfg: StudyConfig, prep: PreparedDataset, strategy: Strategy, subset: SubsetManifest, cid: str,
    have_gpu: bool, echo: Callable[[str], None] = echo, journal: Any = None, journal_file: WorkingCopy | None = None,
    control_key: str | None = None, rank: int = 0, stored: list[dict[str, Any]] | None = None,
) -> None:
    """Tune one cell, re-train the winner with K seeds; every finished trial is stored at once.

    ``rank``: the cell's place in the study's start order (0 = expected longest): Tuner starts are
    serialised, and a cell's finals, then longer cells, start first.

    ``stored``: this cell's rows already in the store (the driver reads the store once for all cells);
    None: read them here.

    The cell is finished only when its whole tuning budget and all K final seeds are in the store: a
    search that ends short (the study was stopped, trials lost) raises before any final run starts.
    """
    results = resolve(cfg.runtime.results)
    if journal is None or journal_file is None:  # one cell on its own (benchmarks, tests): its own journal
        with optuna_journal(results) as (journal_file, journal):
            return run_cell(cfg, prep, strategy, subset, cid, have_gpu, echo, journal, journal_file, control_key,
                            rank, stored)
    label = cell_label(cfg, prep, strategy, subset)
    if stored is None:
        table = read_table(results)
        stored = table.filter(pc.equal(table["cell_id"], cid)).to_pylist() if table.num_rows else []
    replay = replay_from_rows(stored)
    if replay:
        echo(f"  [{label}] resuming: {len(replay)} finished trial(s) of this cell are replayed from the store")
    space = search_space(cfg, strategy)
    res = strategy.resources(have_gpu, cpus_per_gpu() if have_gpu else None)  # GPU trials: the node's CPUs / GPU
    trainable = cell_trainable(strategy, cell_bundle(prep, strategy, subset, space), replay, res, rank, cid)
    budget = cfg.budget
    recipe = strategy.load_recipe(prep.spec.name) or {}
    # the registry's CPUs, not the node's: trial configs (and so trial keys, resume) do not follow the cluster's
    # shape; a trial reads the CPUs Ray gave it at run time (study.train.trial.trial_setup)
    constants = cell_constants(cfg, prep, strategy, subset, cid, strategy.resources(have_gpu)["cpu"], recipe)
    recipe_trial = recipe_point(space, recipe)  # the tuned protocol tries the recipe first
    trackers = functools.partial(tracker_callbacks, cfg, {"study_id": cfg.study_id, "cell_id": cid,
                                 "dataset": prep.spec.name, "strategy": strategy.name, "fraction": subset.fraction})
    store = RowWriter(cfg, results, cid, row_identity(cfg, prep, strategy, subset, cid), replay, journal_file,
                      control_key, recipe_trial)
    if cfg.protocol == "paper":  # nothing to search: the K seeds of the published configuration
        chosen = {**constants, "phase": "final"}
        echo(f"  [{label}] paper recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items())
             + (f"; deviations {';'.join(cfg.deviations)}" if cfg.deviations else ""))
    else:
        _fresh_experiment(results, f"{cid}-tune", journal)
        search = ordered_search(space, budget, f"{cid}-tune", journal, recipe_trial,
                                {"cell_id": cid, "phase": "tune"}) if budget.deterministic else None
        logs = tune_cell(trainable, space, constants, budget, results.child("tune"), f"{cid}-tune", journal, label,
                         echo, on_finish=store, control_key=control_key, first=recipe_trial,
                         trackers=trackers("tune"), rank=rank, search=search)
        store.raise_failure()
        journal_file.push()
        _check_complete(logs, budget.trials, "tuning trials", control_key)
        chosen = {k: v for k, v in pick_best(logs).config.items() if k not in ("seed", "final", "phase")}
        echo(f"  [{label}] best config: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in chosen.items() if k in space))
    results.delete_dir("tune", f"{cid}-final")
    finals = final_runs(trainable, chosen, budget, results.child("tune"), f"{cid}-final", label, echo,
                        on_finish=store, control_key=control_key, trackers=trackers("final"), rank=rank)
    store.raise_failure()
    _check_complete(finals, budget.seeds, "final seeds", control_key)
    failed = [f for f in finals if f.status == "error"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {budget.seeds} final seed(s) failed ({failed[0].error})")


def _protocol_of(cfg: StudyConfig, log: TrialLog, recipe_trial: dict[str, Any] | None) -> str:
    """The ``protocol`` column of a run: paper (paper-modified with deviations), recipe (a tuned cell's enqueued
    recipe trial) or tuned."""
    if cfg.protocol == "paper":
        return cfg.protocol_label
    is_recipe = (recipe_trial is not None and log.config.get("phase", "tune") == "tune"
                 and all(log.config.get(k) == v for k, v in recipe_trial.items()))
    return "recipe" if is_recipe else "tuned"


def _check_complete(logs: list[TrialLog], budget: int, what: str, control_key: str | None) -> None:
    """Raise unless every run of the budget ended on its own (Tune returns short when it was stopped)."""
    if progress.stopped(control_key):
        raise CellInterrupted(f"stopped with {sum(log.status == 'completed' for log in logs)} of {budget} {what} "
                              "completed")
    if len(logs) < budget:
        raise RuntimeError(f"only {len(logs)} of {budget} {what} ran (Tune ended early); re-run to complete")


@contextlib.contextmanager
def optuna_journal(results: Location) -> Iterator[tuple[WorkingCopy, Any]]:
    """The study's Optuna journal: one storage object for all cells (its own lock serialises their appends).

    Optuna's journal needs a local file: on an object store a working copy, pushed after every trial and
    once more however the study ends.
    """
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal_file = WorkingCopy(results, "optuna.journal")
    try:
        path = journal_file.pull().path.resolve()
        # this run holds the results lock, so an Optuna lock file left by a killed run is stale: without this,
        # every resume after a SIGKILL would wait out Optuna's 30-s grace period before it "forcibly releases" it
        Path(f"{path}.lock").unlink(missing_ok=True)
        drop_torn_lines(path)
        yield journal_file, JournalStorage(JournalFileBackend(str(path)))
    finally:
        try:
            journal_file.push()
        finally:
            journal_file.close()


def drop_torn_lines(path: Path) -> int:
    """Drop the lines of an Optuna journal that are not whole JSON records: a write that failed half-way (a full
    disk) leaves one, and Optuna then refuses the whole file. The cells whose searches they belonged to did not
    finish, and a resumed cell starts its Optuna study again (its trials replayed from the store), so nothing
    that a later run reads is lost. Returns how many lines were dropped."""
    import json

    from study.store import atomic_write_bytes

    if not path.is_file():
        return 0
    lines = path.read_bytes().split(b"\n")
    kept = []
    for line in lines:
        try:
            json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if line.strip():
            kept.append(line)
    dropped = sum(1 for ln in lines if ln.strip()) - len(kept)
    if dropped:
        atomic_write_bytes(path, b"".join(ln + b"\n" for ln in kept))
        echo(f"note: {path}: {dropped} torn line(s) dropped (a write that failed half-way, e.g. on a full disk)")
    return dropped
