"""Search space of the ``indomain-fc`` strategy (the per-pixel head on raw spectra).

The head's keys and ranges equal ``crossdomain_fc``'s so the two arms get the same
tuning effort and differ only in their input (there is no backbone here, hence no
``freeze_depth``/``backbone_lr``). The range also brackets this arm's own
reference: the paper's in-domain ``fc`` baseline uses lr 1e-3
(``shared/reference/benchmark.md`` §4.1 item 3), which lies inside 1e-5..1e-2.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "weight_decay": FloatDistribution(1e-6, 1e-1, log=True),
}
