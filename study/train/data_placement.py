"""A trial's data placement, resolved where the facts are: the trial's device, its GPU share, its model.

``--data-placement auto`` needs the model's footprint on the device and the room of the node the trial runs
on, neither known to the driver: :func:`trial_placement` measures them once the model is on its device and
applies :func:`study.data.placement.choose`. The trial reports the placement (the ``data_placement`` column)
and the reason (the driver prints it once per cell phase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from study.data.bundle import Split
from study.data.placement import OPTIMIZER_FACTOR, Choice, DeviceRoom, NodeRoom, choose, held_bytes, node_room
from study.train.devices import ray_gpu_share


def gpu_room(device: torch.device, model: nn.Module) -> DeviceRoom | None:
    """The trial's GPU share (Ray's reservation of the device's memory, at most what is free plus what this process
    holds) and the model's footprint: what this process holds on the device now (measured, the model there) plus
    ``OPTIMIZER_FACTOR`` x its trainable parameters' bytes. None off CUDA."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    share = ray_gpu_share()
    fraction = 1.0 if share is None or share <= 0 else min(1.0, share)
    free, _ = torch.cuda.mem_get_info(index)
    share_bytes = int(min(total * fraction, free + torch.cuda.memory_reserved(index)))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return DeviceRoom(share_bytes, int(torch.cuda.memory_allocated(index)) + OPTIMIZER_FACTOR * trainable)


def trial_placement(requested: str, splits: Sequence[Split], device: torch.device, model: nn.Module,
                    loader_memory_gib: float | None = None) -> Choice:
    """The placement of a trial on ``device`` (its model already there) holding ``splits`` (train, val, test)."""
    if requested in ("stream", "memory") or (requested == "device" and device.type != "cuda"):
        return choose(requested, 0, None, NodeRoom(0, 0))  # nothing to measure: as asked
    data, present = held_bytes(splits)
    node = replace(node_room(loader_memory_gib), present_bytes=present)
    return choose(requested, data, gpu_room(device, model), node)
