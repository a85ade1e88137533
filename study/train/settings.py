"""The optimisation settings of one training run, read once from a trial's config (every loop reads these,
never the raw config dict)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from study.data.stream import LoaderSettings


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run (all from the trial config)."""

    lr: float
    weight_decay: float
    max_epochs: int
    batch_size: int
    seed: int
    hflip_p: float = 0.1
    patience: int | None = 30
    checkpoint_every: int = 1
    final: bool = False
    eval_batch_size: int = 8
    #: forward precision (``study.data.stream.autocast``): auto = bf16 on CUDA, fp32 on CPU
    autocast: str = "auto"
    compile: bool = False
    #: CPUs of the trial (loader workers = this - 1 unless ``loader_workers`` is given)
    num_threads: int = 1
    loader_workers: int | None = None
    #: host memory of batches in flight in the trial's loader (None: ``stream.LOADER_MEMORY``)
    loader_memory_gib: float | None = None
    #: where the splits live (``study.data.placement``): auto, device, memory or stream
    data_placement: str = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainSettings:
        patience = config.get("patience", 30)
        return cls(
            lr=float(config["lr"]),
            weight_decay=float(config.get("weight_decay", 0.0)),
            max_epochs=int(config["max_epochs"]),
            batch_size=int(config["batch_size"]),
            seed=int(config.get("seed", 0)),
            hflip_p=float(config.get("hflip_p", 0.1)),
            patience=None if patience is None else int(patience),
            checkpoint_every=int(config.get("checkpoint_every", 1)),
            final=bool(config.get("final", False)),
            eval_batch_size=int(config.get("eval_batch_size", 8)),
            autocast=str(config.get("autocast", "auto")),
            compile=bool(config.get("compile", False)),
            num_threads=int(float(config.get("num_threads") or 1)),
            loader_workers=None if config.get("loader_workers") is None else int(config["loader_workers"]),
            loader_memory_gib=None if config.get("loader_memory_gib") is None else float(config["loader_memory_gib"]),
            data_placement=str(config.get("data_placement", "auto")),
        )

    def loader(self, device: torch.device) -> LoaderSettings:
        """The trial's DataLoader settings: workers from its CPUs, pinned memory on CUDA."""
        return LoaderSettings.for_trial({"num_threads": self.num_threads, "loader_workers": self.loader_workers,
                                         "loader_memory_gib": self.loader_memory_gib}, device)
