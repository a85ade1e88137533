"""Import timm beside the CPU torch 2.13 of this project, for the reference-making scripts only.

Why this exists: timm imports torchvision, and the only torchvision for torch 2.13
in the registry (0.28.0) is a CUDA build whose C extension cannot load beside
``torch==2.13.0+cpu``. torchvision's import then fails on the two operators its
``_meta_registrations`` registers without checking that the extension loaded
(``torchvision::nms``, ``torchvision::qnms``). Declaring those two schemas first lets
``import torchvision`` (and so ``import timm``) finish; no torchvision operator is
ever *run* by the models used here (timm's ViT blocks and layers are plain torch).

``TIMM_FUSED_ATTN=0``: timm then computes attention by the explicit
``softmax(q k^T * scale) v`` product instead of ``scaled_dot_product_attention``, which
is what our models call; the reference thus takes a different numerical path.

Used by scripts/make_hypersl_reference.py and scripts/make_vit_reference.py, run in a
separate venv (see tests/fixtures/vit_timm/PROVENANCE.md); the test suite never imports it.
"""

from __future__ import annotations

import contextlib
import os
from types import ModuleType

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_KEEP: list[torch.library.Library] = []  # a Library fragment unregisters its definitions when collected


def import_timm() -> ModuleType:
    """``import timm`` with explicit (non-fused) attention, torchvision's two schemas declared where missing."""
    os.environ["TIMM_FUSED_ATTN"] = "0"
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        with contextlib.suppress(RuntimeError):  # already defined: the extension did load (a matching build)
            lib.define(schema)
    _KEEP.append(lib)
    import timm

    return timm
