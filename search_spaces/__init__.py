"""One plain dict of Optuna distributions per strategy (``SPACE``), and its published recipe (``PAPER``).

``PAPER`` is what ``--protocol paper`` trains verbatim and what every tuned cell
tries first (enqueued in Optuna, so ASHA and TPE see it like any trial). A value
that is a ``{dataset: value}`` dict depends on the dataset (batch sizes).
"""

from __future__ import annotations

from optuna.distributions import CategoricalDistribution

#: Weight decay is searched over a decade grid that includes 0, the published recipes' value for the RU-Net
#: arms, which a log-uniform range could never propose. The same grid for every strategy (same effort).
WEIGHT_DECAY = CategoricalDistribution([0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
