"""HyperSL masked spectral modelling on real spectra: settings (:mod:`.config`), the training loop with its
resume points (:mod:`.loop`), model cards (:mod:`.cards`), the packaged default backbone (:mod:`.cache`)
and the command line (:mod:`.cli`, ``python -m study.pretrain``). docs/pretraining.md has the recipe,
the opt-in deviations and what they measured.

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.pretrain.cache import PACKAGED, backbone_path, ensure_default_backbone, packaged_checkpoint
from study.pretrain.cards import card_markdown, write_cards
from study.pretrain.cli import main
from study.pretrain.config import (
    DEFAULT_STEPS,
    PRETRAIN_VERSION,
    STATEMENT,
    PretrainConfig,
    default_config,
    effective_mask_ratio,
    settings_hash,
)
from study.pretrain.loop import (
    PretrainStopped,
    default_save_every,
    pretrain,
    resolve_device,
    resume_path,
    z_only_reconstruction,
)

__all__ = [
    "DEFAULT_STEPS",
    "PACKAGED",
    "PRETRAIN_VERSION",
    "STATEMENT",
    "PretrainConfig",
    "PretrainStopped",
    "backbone_path",
    "card_markdown",
    "default_config",
    "default_save_every",
    "effective_mask_ratio",
    "ensure_default_backbone",
    "main",
    "packaged_checkpoint",
    "pretrain",
    "resolve_device",
    "resume_path",
    "settings_hash",
    "write_cards",
    "z_only_reconstruction",
]
