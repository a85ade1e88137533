"""Search space of the ``indomain-fc`` strategy (the per-pixel head on raw spectra).

The head's keys and ranges equal ``crossdomain_fc``'s so the two arms get the same
tuning effort and differ only in their input (there is no backbone here, hence no
``freeze_depth``/``backbone_lr``). The range also brackets this arm's own
reference: the paper's in-domain ``fc`` baseline uses lr 1e-3
(``docs/reference.md`` §R16 item 3), which lies inside 1e-5..1e-2.
"""

from __future__ import annotations

from optuna.distributions import BaseDistribution, FloatDistribution

from search_spaces import WEIGHT_DECAY

SPACE: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-5, 1e-2, log=True),
    "weight_decay": WEIGHT_DECAY,
}

#: the paper repository's in-domain ``fc`` baseline: Linear(C, K) without BatchNorm, lr 1e-3, 4,096-pixel steps
#: (§R16 item 3). Its weight decay is not stated there; 0 is assumed. Loaded batches as HyperSL-FC's.
PAPER: dict[str, object] = {"lr": 1e-3, "weight_decay": 0.0, "batchnorm": False, "sub_batch": 4096,
                            "images_per_batch": {"hyko2": 8, "hsidrive": 32, "hcv2": 4}}
