"""What a study's settings default to: the embedded presets (``--smoke``, ``--demo``, a full study) and what
``--protocol paper`` fixes (the published recipe). Plain data, kept apart from the settings classes that
validate them (:mod:`study.config.settings`)."""

from __future__ import annotations

from typing import Any

from study.data.synthetic.generator import GeneratorConfig

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
PROTOCOLS = ("tuned", "paper")
#: ``--protocol paper``: the published recipe verbatim (docs/reference.md §R8, §R16–§R19): up to 500 epochs with
#: patience 30, frozen backbone, float32 features exported with chunk-mode BatchNorm, the benchmark's seed-42 subsets.
#: These are the defaults under it; a flag that contradicts one is refused unless ``--allow-deviations``.
PAPER_FIXED: dict[str, Any] = {"patience": 30, "max_freeze_depth": 0, "feature_dtype": "float32", "bn_mode": "chunk"}
PAPER_EPOCHS = 500
#: The recipe's values of every study setting it fixes (``StudyConfig.deviations`` compares against them): the
#: above, the full-width RU-Net (17.3 M parameters, §R7) and the recipe's own batch sizes per dataset and arm
#: (``batch_size`` None; the search_spaces/*.py ``PAPER`` entries hold them). Which data the recipe is applied to
#: (the synthetic default, a user's own files, the fractions) is no deviation: every row names its data source.
PAPER_RECIPE: dict[str, Any] = {"epochs": PAPER_EPOCHS, "width": "full", "batch_size": None, **PAPER_FIXED}
#: the ``protocol`` of rows of a paper study with deviations (``--allow-deviations``); never plain ``paper``
PAPER_MODIFIED = "paper-modified"
#: --deterministic: trials per proposal wave when neither --search-batch nor --max-concurrent says
DEFAULT_SEARCH_BATCH = 4

#: What ``--smoke`` / ``--demo`` / nothing fill in for settings the user left out (flat setting names).
PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(fractions=DEFAULT_FRACTIONS, trials=16, epochs=100, seeds=3, grace_period=10, width=None),
    "demo": dict(
        fractions=(0.1, 0.25, 1.0), trials=4, epochs=30, seeds=2, grace_period=5, width="small", batch_size=4,
        # 48 x 96 px (was 64 x 128): 0.56x the pixels per epoch, so a first `make demo` fits in ten minutes on
        # 2 cores (measured in the closing note of the change and in README); the same scenes, classes and counts
        synthetic=GeneratorConfig(height=48, width=96, n_train=40, n_val=12, n_test=16),
        # a per-pixel transformer in every training step (k > 0) costs minutes per epoch on a laptop CPU
        max_freeze_depth=0,
        # one cell at a time: on 2 cores a cell's own trials fill the machine, and ASHA's decisions then do not
        # depend on how other cells' trials interleave, so the demo's table is the same on every run
        max_concurrent_cells=1,
        # the demo's table is one a newcomer can check to the last digit (issue 27): search and early stopping
        # follow trial order and results only (study/search/deterministic.py), never the machine's load
        deterministic=True,
    ),
    "smoke": dict(
        fractions=(0.5, 1.0), trials=2, epochs=2, seeds=1, grace_period=1, width="tiny",
        synthetic=GeneratorConfig(height=32, width=48, n_train=6, n_val=3, n_test=3), max_freeze_depth=0,
        allow_random_init=True,  # plumbing, not transfer: an RGB ViT arm runs without released weights
        deterministic=True,  # the same smoke command gives the same rows on a busy CI runner
    ),
}
