"""Search space of the ``crossdomain`` strategy (HyperSL-RU-Net: RU-Net on frozen per-pixel features).

The paper trains this arm with the RU-Net recipe unchanged: AdamW lr 1e-3, wd 0,
dropout 0.25 (``shared/reference/benchmark.md`` §4.1 item 2), only the input
differs (256-d features instead of raw bands). The ranges therefore equal the
``indomain`` strategy's, so both arms get the same tuning effort. ``lr`` is the
head (RU-Net) lr; a backbone lr and the freeze depth k join this space only
when k > 0 is implemented.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
}
