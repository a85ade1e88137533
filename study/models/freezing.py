"""Freeze depth and optimizer parameter groups: one interface for every backbone, as timm does it.

Every backbone (:class:`~study.models.hypersl.HyperSL`,
:class:`~study.models.vit.VisionTransformer`) exposes ``layer_groups()``: its
parameters in ordered groups, stem first, each group a list of modules and
loose parameters (tokens, position tables). **``freeze_depth`` k counts
trainable groups from the top**: the last k groups train, k = 0 freezes the
backbone, k = len(groups) trains all of it (stem included). This is the one
meaning of ``freeze_depth`` wherever it is read (configs, search spaces, rows).

:func:`param_groups` builds the AdamW groups of every arm (RU-Net from scratch,
per-pixel heads, HyperSL k > 0, the ViT) with one weight-decay rule, timm's
``param_groups_weight_decay`` + ``no_weight_decay()``: no decay on norms and
biases (parameters with ndim <= 1), on tokens and position parameters (names
containing ``token``, ``pos_embed`` or ``position``) and on what a module
declares in its own ``no_weight_decay()``; decay on the rest. One rule, so two
arms of one comparison never differ in their optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import nn

#: One layer group: modules and loose parameters (a class token, a position table) that freeze together.
LayerGroup = list[nn.Module | nn.Parameter]
#: Substrings of a parameter's own name that mark it as a token or a position parameter (timm's exclusions).
NO_DECAY_NAMES = ("token", "pos_embed", "position")


class Backbone(Protocol):
    """What :func:`set_trainable_depth` needs: a module with ordered layer groups (stem first)."""

    def layer_groups(self) -> list[LayerGroup]: ...

    def requires_grad_(self, requires_grad: bool = True) -> nn.Module: ...


def group_parameters(group: Sequence[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    """The parameters of one layer group (a module's, or a loose parameter itself)."""
    return [p for item in group for p in ([item] if isinstance(item, nn.Parameter) else item.parameters())]


def set_trainable_depth(backbone: Backbone, k: int) -> None:
    """Train only the last ``k`` layer groups of ``backbone`` (k = 0: frozen); everything else in it is frozen.

    Parameters in no group (a HyperSL decoder, a fixed position table) stay frozen at every k.
    """
    groups = backbone.layer_groups()
    if not 0 <= k <= len(groups):
        raise ValueError(f"0 <= freeze_depth <= {len(groups)} must hold for this {type(backbone).__name__} "
                         f"(freeze_depth counts its trainable layer groups), got freeze_depth={k}")
    backbone.requires_grad_(False)
    for group in groups[len(groups) - k:]:
        for p in group_parameters(group):
            p.requires_grad_(True)


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """timm's rule: norms and biases (ndim <= 1), tokens and position parameters are not decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or any(s in leaf for s in NO_DECAY_NAMES)


def declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that sub-modules list in their ``no_weight_decay()`` (timm's hook)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names |= {f"{prefix}.{n}" if prefix else n for n in hook()}
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, *, backbone: nn.Module | None = None,
                 backbone_lr: float | None = None) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable parameters, the one rule for every arm.

    Parameters of ``backbone`` (a sub-module of ``model``) train at ``backbone_lr``
    (default ``lr``), the rest (heads, bridges, a model trained from scratch) at
    ``lr``; each part is split by :func:`no_weight_decay` into a group decayed by
    ``weight_decay`` and one with weight decay 0. Empty groups are left out.
    """
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    exempt = declared_no_decay(model)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(b, d): [] for b in (False, True) for d in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = not (name in exempt or no_weight_decay(name, p))
            buckets[id(p) in in_backbone, decay].append(p)
    blr = lr if backbone_lr is None else backbone_lr
    return [{"params": params, "lr": blr if is_backbone else lr, "weight_decay": weight_decay if decay else 0.0}
            for (is_backbone, decay), params in buckets.items() if params]
