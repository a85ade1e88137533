"""Data: HS3-Bench split files (reader, checks, specs), training subsets, the streaming loader and the resident
placements (device, a node-shared host copy) with the rule that picks one, staging, offline spectra, and the
synthetic default (:mod:`study.data.synthetic`).

A package of modules: import a name from the module that defines it
(``from study.data.<module> import ...``): each imports no heavier dependency than it uses (the report's
modules stay free of torch), so this face exports modules, not re-exported names."""

__all__ = [
    'bundle',
    'datasets',
    'h5checks',
    'h5reader',
    'placement',
    'pretrain_data',
    'resident',
    'shared_copy',
    'specs',
    'spectra',
    'staging',
    'storage',
    'stream',
    'subsets',
    'synthetic',
]
