"""HyperSL masked spectral modelling on real spectra: settings, loop, model cards and the packaged
default backbone (``python -m study.pretrain``).

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.pretrain.cache import PACKAGED, backbone_path, ensure_default_backbone, packaged_checkpoint
from study.pretrain.cli import main
from study.pretrain.config import default_config

__all__ = [
    "PACKAGED",
    "backbone_path",
    "default_config",
    "ensure_default_backbone",
    "main",
    "packaged_checkpoint",
]
