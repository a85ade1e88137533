"""The embedded default: an HS3-Bench-like street scene rendered through each dataset's sensor from real
spectra (generator, scene, render, sensor, materials, labels).

A package of modules: import a name from the module that defines it
(``from study.data.synthetic.<module> import ...``): each imports no heavier dependency than it uses (the report's
modules stay free of torch), so this face exports modules, not re-exported names."""

__all__ = ['generator', 'labels', 'materials', 'render', 'scene', 'sensor']
