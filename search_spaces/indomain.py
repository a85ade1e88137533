"""Search space of the ``indomain`` strategy (RU-Net trained from scratch).

Plain Optuna distributions, nothing Ray-specific: the driver turns them into
OptunaSearch suggestions. Ranges bracket the HS3-Bench recipe (AdamW lr 1e-3,
wd 0, dropout 0.25; docs/reference.md §R8) by about a decade each way.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

from search_spaces import WEIGHT_DECAY

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "weight_decay": WEIGHT_DECAY,
    "dropout": FloatDistribution(0.0, 0.5),
}

#: HS3-Bench's RU-Net recipe (AdamW lr 1e-3, wd 0, dropout 0.25; batch 16 / 32 / 4 full images; docs/reference.md §R8)
PAPER: dict[str, object] = {"lr": 1e-3, "weight_decay": 0.0, "dropout": 0.25,
                            "batch_size": {"hyko2": 16, "hsidrive": 32, "hcv2": 4}}
