"""The start every trainable shares: Ray hooks, threads, dataset spec, settings, seed.

One function instead of a preamble copied into every trainable, so that every
strategy seeds before it builds a model and reads its settings the same way;
:meth:`TrialSetup.fit` then runs ``loop.fit`` with what was set up.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from study.data.bundle import DataBundle
from study.data.specs import DatasetSpec, get_spec
from study.train.devices import (
    deterministic_kernels,
    limit_gpu_memory,
    pick_device,
    ray_cpus,
    release_device_memory,
    seed_everything,
)
from study.train.loop import Report, fit, tune_hooks
from study.train.settings import TrainSettings
from study.train.threads import configure_threads


@dataclass(frozen=True)
class TrialSetup:
    """What a trainable works with after :func:`trial_setup`."""

    spec: DatasetSpec
    settings: TrainSettings
    report: Report
    get_checkpoint: Callable[[], Any] | None
    #: The frozen backbone's hash for result rows: the bundle's (feature bundles), else the config's, else None.
    backbone_hash: str | None

    def fit(self, model: nn.Module, data: DataBundle, **kwargs: Any) -> dict:
        """``loop.fit`` with this trial's spec, settings and Ray hooks (``kwargs``: backbone, extra, epoch_fn...).

        Afterwards (also when it fails) the process's cached CUDA memory, pinned host blocks included, is given
        back: Ray reuses the actor for the next trial, and the host caching allocator never frees on its own."""
        try:
            return fit(model, data, self.spec, self.settings, self.report, get_checkpoint=self.get_checkpoint,
                       **kwargs)
        finally:
            release_device_memory(pick_device())


def trial_setup(config: Mapping[str, Any], data: DataBundle, report: Report | None,
                get_checkpoint: Callable[[], Any] | None,
                overrides: Mapping[str, Any] | None = None) -> TrialSetup:
    """Ray's hooks unless given, torch threads, the dataset spec, ``TrainSettings`` and the seed.

    ``overrides`` replace config values for the settings only (a per-pixel trial's
    loaded batch, crossmodality's ``head_lr`` as the loop's ``lr``); the config is
    read key by key, never copied (tests record which keys a trainable reads).
    Seeds torch before the caller builds its model, so initial weights follow the seed. A trial with a
    fractional GPU share (Ray's reservation, the strategy's ``gpus_per_trial``) has its CUDA memory capped
    at that share (:func:`study.train.devices.limit_gpu_memory`): Ray only accounts for shares.
    """
    report, get_checkpoint = tune_hooks(report, get_checkpoint)
    configure_threads(config)
    limit_gpu_memory(pick_device())
    if config.get("deterministic"):  # --deterministic: on CUDA, deterministic kernels too
        deterministic_kernels(pick_device())
    spec = get_spec(data.dataset)
    cpus = ray_cpus()  # Ray may give more CPUs than the config names (GPU trials: the node's CPUs per GPU)
    if cpus is not None and cpus > int(float(config.get("num_threads") or 1)):
        overrides = {**(overrides or {}), "num_threads": cpus}  # for the loader's workers; torch keeps its threads
    settings = TrainSettings.from_config(ChainMap(dict(overrides), config) if overrides else config)
    seed_everything(settings.seed)
    backbone_hash = data.backbone_hash if data.backbone_hash is not None else config.get("backbone_hash")
    return TrialSetup(spec, settings, report, get_checkpoint, backbone_hash)
