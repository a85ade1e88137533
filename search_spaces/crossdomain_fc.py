"""Search space of the ``crossdomain-fc`` strategy (HyperSL-FC: BN1d + Linear on frozen features).

Plain Optuna distributions, nothing Ray-specific. The paper trains this head
with AdamW lr 1e-4, wd 1e-4 (``shared/reference/benchmark.md`` §4.1 item 3):
lr spans 1e-5..1e-2, a decade below and two above, because a linear head after
BatchNorm often tolerates much larger steps and with few labelled images the
paper's small lr may not converge within the epoch budget; weight decay spans
1e-6..1e-1 on a log scale, as for the other strategies. Freeze depth k and the
backbone lr are not searched here: k = 0 (features come from the cache).
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
}
