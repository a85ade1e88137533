"""Per-pixel classification heads: each pixel's vector (spectrum or feature) -> class scores.

:class:`PixelFC` is the head of the cross-domain paper's spectral classification
arm, "HyperSL-FC" (``cross-domain-hsi`` ``model=hypersl-fc``,
``MLPClassificationHead``; ``docs/reference.md`` §R16 item 3):
BatchNorm1d(D) -> Linear(D, n_classes) on 256-d HyperSL features, softmax folded
into the cross-entropy loss. The paper's no-op 1×1 average pool is left out.

With ``batchnorm=False`` it is the repository's in-domain ``mlp`` "fc" baseline
(Linear(C, K) on raw spectra). The study's ``indomain-fc`` strategy keeps the
BatchNorm by default so that it differs from HyperSL-FC only in its input
(raw spectrum vs HyperSL feature): the BN also absorbs the raw values' scale,
which is why no input standardisation is needed (the paper feeds raw values).
"""

from __future__ import annotations

import torch
from torch import nn


class PixelFC(nn.Module):
    """BatchNorm1d(in_dim) -> Linear(in_dim, n_classes), or Linear only; input (P, in_dim), output (P, K)."""

    def __init__(self, in_dim: int, n_classes: int, batchnorm: bool = True) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"PixelFC needs in_dim >= 1 and n_classes >= 1, got {in_dim} and {n_classes}")
        self.in_dim, self.n_classes, self.batchnorm = in_dim, n_classes, batchnorm
        self.norm: nn.Module = nn.BatchNorm1d(in_dim) if batchnorm else nn.Identity()
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"PixelFC expects pixels (P, {self.in_dim}), got shape {tuple(x.shape)}")
        return self.fc(self.norm(x))
