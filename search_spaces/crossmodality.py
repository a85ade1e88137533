"""Search space of the ``crossmodality`` strategy (DINOv2 ViT on a bridged cube + light segmentation head).

Plain Optuna distributions, nothing Ray-specific. There is no reference recipe
for this arm (``docs/reference.md`` §R20), so the ranges follow the
usual fine-tuning practice for DINOv2 segmentation probes:

- ``head_lr`` 1e-4..1e-2: a freshly initialised head (and learned bridge) after
  BatchNorm tolerates large steps;
- ``backbone_lr`` 1e-6..1e-4: pretrained blocks need steps one to two decades
  smaller than the head, or the pretraining is washed out (unused when k = 0);
- ``weight_decay`` 1e-6..1e-1 on a log scale, as for every other strategy;
- ``freeze_depth`` k in 0..4: 0 = frozen backbone (linear-probe style), up to
  the last 4 of 12 blocks (tiny has 4); full fine-tuning of a ViT on a few
  labelled images is rarely worth its cost;
- ``bridge``: fixed pseudo-RGB vs a learned 1x1 projection initialised to it;
- ``head``: DINOv2's linear probe vs a small two-stage decoder.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from search_spaces import WEIGHT_DECAY

SPACE: dict[str, BaseDistribution] = {
    "head_lr": FloatDistribution(1e-4, 1e-2, log=True),
    "backbone_lr": FloatDistribution(1e-6, 1e-4, log=True),
    "weight_decay": WEIGHT_DECAY,
    "freeze_depth": IntDistribution(0, 4),
    "bridge": CategoricalDistribution(["pseudo-rgb", "learned"]),
    "head": CategoricalDistribution(["linear", "decoder"]),
}
