"""Training: a trial's start and device (what Ray gave it) and data placement, the epoch loop with early stopping
and checkpoints, the per-pixel loop and the k > 0 raw-spectra path, metrics.

A package of modules: import a name from the module that defines it
(``from study.train.<module> import ...``): each imports no heavier dependency than it uses (the report's
modules stay free of torch), so this face exports modules, not re-exported names."""

__all__ = ['data_placement', 'devices', 'freeze_depth', 'loop', 'metrics', 'pixel_loop', 'raw_spectra', 'settings',
           'threads', 'trial', 'trial_state']
