"""Search space of the ``indomain`` strategy (RU-Net trained from scratch).

Plain Optuna distributions, nothing Ray-specific: the driver turns them into
OptunaSearch suggestions. Ranges bracket the HS3-Bench recipe (AdamW lr 1e-3,
wd 0, dropout 0.25; benchmark.md §2.2) by about a decade each way.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
}
