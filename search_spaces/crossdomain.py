"""Search space of the ``crossdomain`` strategy (HyperSL-RU-Net: RU-Net on per-pixel HyperSL features).

The paper trains this arm with the RU-Net recipe unchanged: AdamW lr 1e-3, wd 0,
dropout 0.25 (``docs/reference.md`` §R16 item 2), only the input
differs (256-d features instead of raw bands). ``lr``, ``weight_decay`` and
``dropout`` therefore equal the ``indomain`` strategy's ranges, so both arms get
the same tuning effort; ``lr`` is the RU-Net's.

``freeze_depth`` k (0..:data:`K_MAX`) is how many of HyperSL's last layer groups
(stem -> blocks -> final layer) train in the trial, at ``backbone_lr``. k = 0 is
the paper's frozen backbone on cached features, and there ``backbone_lr`` is
sampled but ignored (a dead dimension for TPE, which costs it nothing; rows still
record it). K_MAX = 2 because every unfrozen group replaces a cache read by a
per-pixel transformer pass over every trained pixel in every epoch (forward of
the whole backbone + backward of k groups: ≈0.2-1.8 GFLOP per pixel for the
``small`` backbone, docs/reference.md §R21), so deeper unfreezing multiplies the
study's cost; the last layers are also the most task-specific ones. K_MAX = 2
keeps the stem frozen for every backbone with >= 2 encoder layers (even ``tiny``),
so the chunk-mode BatchNorm semantics of the export never change in a search.
``backbone_lr`` spans 1e-6..1e-3: pretrained layers are fine-tuned at or below
the head's lr (HyperSL's own downstream recipe trains all layers at 1e-4, §R15).
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from search_spaces import WEIGHT_DECAY

#: Deepest freeze depth the search proposes (see the module docstring for why).
K_MAX = 2

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "weight_decay": WEIGHT_DECAY,
    "dropout": FloatDistribution(0.0, 0.5),
    "freeze_depth": IntDistribution(0, K_MAX),
    "backbone_lr": FloatDistribution(1e-6, 1e-3, log=True),
}

#: the paper's HyperSL-RU-Net: the RU-Net recipe unchanged on frozen features (batch 16 / 16 / 4; §R16, §R18).
#: ``backbone_lr`` is unused at k = 0; it is given so the recipe is a point of the search space.
PAPER: dict[str, object] = {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.25, "freeze_depth": 0,
                            "backbone_lr": 1e-5, "batch_size": {"hyko2": 16, "hsidrive": 16, "hcv2": 4}}
