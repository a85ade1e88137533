"""Search space of the ``crossdomain-fc`` strategy (HyperSL-FC: BN1d + Linear on per-pixel features).

Plain Optuna distributions, nothing Ray-specific. The paper trains this head
with AdamW lr 1e-4, wd 1e-4 (``docs/reference.md`` §R16 item 3):
lr spans 1e-5..1e-2, a decade below and two above, because a linear head after
BatchNorm often tolerates much larger steps and with few labelled images the
paper's small lr may not converge within the epoch budget; weight decay spans
1e-6..1e-1 on a log scale, as for the other strategies. ``lr`` is the head's.

``freeze_depth`` and ``backbone_lr`` are those of ``search_spaces.crossdomain``
(same K_MAX and range, same reasons: per-pixel transformer compute, stem kept
frozen). At k = 0 the features come from the cache and ``backbone_lr`` is
sampled but ignored.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from search_spaces import WEIGHT_DECAY
from search_spaces.crossdomain import K_MAX

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "weight_decay": WEIGHT_DECAY,
    "freeze_depth": IntDistribution(0, K_MAX),
    "backbone_lr": FloatDistribution(1e-6, 1e-3, log=True),
}

#: the paper's HyperSL-FC: AdamW lr 1e-4, wd 1e-4, 8,192-pixel steps from loaded batches of 8 / 32 / 4 images
#: (§R16 item 3); ``backbone_lr`` is unused at k = 0 (given so the recipe is a point of the search space)
PAPER: dict[str, object] = {"lr": 1e-4, "weight_decay": 1e-4, "freeze_depth": 0, "backbone_lr": 1e-5,
                            "sub_batch": 8192, "images_per_batch": {"hyko2": 8, "hsidrive": 32, "hcv2": 4}}
