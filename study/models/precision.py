"""fp32 islands inside a bf16-autocast forward, and IEEE fp32 (no TF32) for them on CUDA.

A trial's forward runs under bf16 autocast on CUDA (``study.data.stream.autocast``). Some layers must not:
the layers that see **raw** values (HyperSL's stem on raw spectra, RU-Net's first conv on raw cubes, the
learned RGB bridge) — bf16 keeps 8 bits of a conv output of raw counts (3000 ± 50), and a BatchNorm after it
subtracts the mean from what is left — and HyperSL's frozen prefix at freeze depth k > 0, which must compute
exactly the features of the k = 0 cache (an fp32 export) or the two arms of one search see different inputs.

On CUDA an fp32 conv is not IEEE fp32 by default: cuDNN runs it in TF32
(``torch.backends.cudnn.conv.fp32_precision == "tf32"``, 10 mantissa bits), so a GPU-made feature cache would
differ from a CPU-made one. :func:`ieee_fp32` sets convs and matmuls to IEEE fp32 for a region and restores
the process's settings afterwards (trials keep TF32 elsewhere, where it is a speed choice, not a contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: the fp32 precision settings :func:`ieee_fp32` pins: (object, attribute) pairs of ``torch.backends``
_FP32_SETTINGS = ((torch.backends.cudnn.conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision"))


@contextmanager
def ieee_fp32(device: str | torch.device) -> Iterator[None]:
    """fp32 convolutions and matmuls in IEEE precision (no TF32) on a CUDA ``device``; nothing elsewhere."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = [getattr(obj, name) for obj, name in _FP32_SETTINGS]
    for obj, name in _FP32_SETTINGS:
        setattr(obj, name, "ieee")
    try:
        yield
    finally:
        for (obj, name), value in zip(_FP32_SETTINGS, before, strict=True):
            setattr(obj, name, value)


@contextmanager
def full_precision(device: str | torch.device) -> Iterator[None]:
    """No autocast and IEEE fp32 on ``device``: the region computes what it would compute outside a trial.

    Inputs must be fp32 (``x.float()``): autocast no longer casts them."""
    with torch.autocast(torch.device(device).type, enabled=False), ieee_fp32(device):
        yield
