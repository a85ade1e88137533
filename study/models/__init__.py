"""Models: HyperSL (full and partial), RU-Net, the ViT and its RGB bridge, per-pixel heads, checkpoints and
the freeze-depth rule shared by every backbone.

A package of modules: import a name from the module that defines it
(``from study.models.<module> import ...``): each imports no heavier dependency than it uses (the report's
modules stay free of torch), so this face exports modules, not re-exported names."""

__all__ = [
    'checkpoints',
    'freezing',
    'heads',
    'hypersl',
    'hypersl_partial',
    'rgb_bridge',
    'runet',
    'vit',
    'vit_seg',
    'vit_weights',
]
