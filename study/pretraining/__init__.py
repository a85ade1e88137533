"""HyperSL masked spectral modelling, in parts: the settings (:mod:`.config`), the training loop with its
resume points (:mod:`.loop`), the model cards (:mod:`.cards`) and the default-backbone cache (:mod:`.cache`).

``python -m study.pretrain`` is the command line over them and re-exports their public names;
docs/pretraining.md has the recipe, the opt-in deviations and what they measured.
"""
