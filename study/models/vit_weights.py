"""Pretrained DINOv2 weights for :mod:`study.models.vit`: three file layouts, one strict loader, no downloads.

Accepted layouts (all converted to timm's names before a strict load):

- **timm** (``vit_*_patch14_dinov2.lvd142m``, e.g. the Hugging Face hub's
  ``timm/vit_small_patch14_dinov2.lvd142m/model.safetensors``): used as is;
- **DINOv2 hub** (facebookresearch ``dinov2_vits14_pretrain.pth``): timm's names
  plus ``mask_token`` (the iBOT masking token, unused for inference: dropped);
  block-chunked training layouts (``blocks.0.5.``) are flattened;
- **Hugging Face ``Dinov2Model``** (``facebook/dinov2-small``): ``embeddings.*``
  / ``encoder.layer.N.*`` renamed, separate query/key/value concatenated into
  timm's fused ``qkv`` (q, k, v order).

Files are read by :func:`study.models.checkpoints.read_checkpoint`: safetensors by
our own codec, torch files only with ``weights_only=True`` (a crafted pickle is
refused). The size (small/base/large/tiny) is inferred from the tensor shapes;
a file for another architecture stops with one message listing missing and
unexpected keys and shape mismatches. Without ``--rgb-weights`` nothing is downloaded:
only files already in the Hugging Face hub cache or the torch hub cache are looked up
(:func:`cached_weights`); ``--rgb-weights hf://OWNER/REPO/FILE`` goes through the one Hub
resolver of every weights flag (:mod:`study.hub`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from study.errors import ConfigError, HsiStudyError
from study.hub import cached_file, hub_cache_dir
from study.models.checkpoints import checkpoint_hash, load_state_strict, mismatch_report, read_checkpoint
from study.models.vit import SIZES, TIMM_NAMES, VisionTransformer, ViTConfig

_HUB_LETTER = {"small": "s", "base": "b", "large": "l"}
_WRAPPERS = ("state_dict", "model", "teacher")  # nested containers seen in released and training checkpoints


# ---------------------------------------------------------------- layout conversion
def _unwrap(state: dict) -> dict:
    """Descend into ``{"state_dict": ...}`` / ``{"teacher": ...}`` wrappers until tensors appear."""
    while not any(isinstance(v, Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop wrapper prefixes: ``module.`` (DataParallel), ``backbone.`` (DINOv2 training), ``dinov2.`` (HF heads)."""
    if any(k.startswith("dinov2.") for k in state):  # Dinov2For*: keep the backbone, drop the task head
        state = {k[len("dinov2."):]: v for k, v in state.items() if k.startswith("dinov2.")}
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


_HF_RENAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("layernorm.", "norm."),
)


def _from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``Dinov2Model`` names -> timm names (q, k, v fused into ``qkv``)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for k, v in state.items():
        if k == "embeddings.mask_token":
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$", k)
        if m:
            qkv.setdefault(f"blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2)] = v
            continue
        k = re.sub(r"^encoder\.layer\.(\d+)\.", r"blocks.\1.", k)
        for old, new in _HF_RENAMES:  # each old name occurs in exactly one place of the HF layout
            k = k.replace(old, new)
        out[k] = v
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            lacking = sorted({"query", "key", "value"} - set(parts))
            raise HsiStudyError(f"Hugging Face DINOv2 weights: {name} lacks {lacking}")
        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def to_timm_state(state: dict) -> tuple[dict[str, Tensor], str]:
    """Any accepted layout -> (state dict in timm names, layout name ``timm`` | ``dinov2`` | ``hf``).

    Dropped on purpose: ``mask_token`` (DINOv2 masking, no role at inference) and
    a classifier (``head.*``), which the segmentation head replaces.
    """
    state = _strip_prefixes(_unwrap(state))
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return _from_hf(state), "hf"
    fmt = "dinov2" if "mask_token" in state else "timm"
    out = {}
    for k, v in state.items():
        if k == "mask_token" or k.startswith("head."):
            continue
        out[re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k)] = v  # chunked blocks (block_chunks > 0)
    return out, fmt


# ---------------------------------------------------------------- size inference and loading
def config_from_state(state: dict[str, Tensor]) -> tuple[str, ViTConfig] | None:
    """(size name, config) matching the shapes, or None when they match no named size."""
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    if not all(k in state for k in needed):
        return None
    dim, patch = int(state["cls_token"].shape[-1]), int(state["patch_embed.proj.weight"].shape[-1])
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    grid = math.isqrt(max(int(state["pos_embed"].shape[1]) - 1, 0))
    for name, cfg in SIZES.items():
        if (cfg.dim, cfg.depth, cfg.patch) == (dim, depth, patch):
            return name, ViTConfig(**{**cfg.as_dict(), "img_size": grid * patch})
    return None


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file holds: its size, layout and identity (short sha256, as in result rows)."""

    path: Path
    size: str
    layout: str
    sha: str


def _checked_state(path: Path, size: str | None) -> tuple[dict[str, Tensor], str, str, ViTConfig]:
    """Read, convert and size-check a file; HsiStudyError names the mismatch and the fix."""
    if not path.is_file():
        raise HsiStudyError(f"--rgb-weights {path} is not a file; pass a DINOv2 ViT .safetensors or .pth file")
    state, layout = to_timm_state(read_checkpoint(path)["model"])
    found = config_from_state(state)
    if found is None:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            ref = VisionTransformer(SIZES[size or "small"])
        raise HsiStudyError(
            f"{path} is not DINOv2 ViT weights of a known size ({', '.join(SIZES)}): {mismatch_report(ref, state)}. "
            "Expected a timm vit_*_patch14_dinov2, a DINOv2 hub or a Hugging Face Dinov2Model file "
            "(giant and register variants are not supported)"
        )
    name, cfg = found
    if size is not None and size != name:
        raise ConfigError(f"--vit-size {size} does not match {path}, which holds a {name} ViT "
                          f"(dim {cfg.dim}, depth {cfg.depth}); drop --vit-size or pass matching weights")
    return state, layout, name, cfg


def inspect_weights(path: str | Path, size: str | None = None) -> WeightsInfo:
    """Validate a weights file without building the model (meta device): for checks before Ray starts."""
    path = Path(path)
    state, layout, name, cfg = _checked_state(path, size)
    with torch.device("meta"):
        ref = VisionTransformer(cfg)
    report = mismatch_report(ref, state)
    if report:
        raise HsiStudyError(f"{path} does not fit the {name} DINOv2 ViT: {report}. Is it for another architecture?")
    return WeightsInfo(path, name, layout, checkpoint_hash(path))


def load_vit(path: str | Path, size: str | None = None,
             sha: str | None = None) -> tuple[VisionTransformer, WeightsInfo]:
    """A ViT built to the file's size with every weight loaded strictly (CPU), and what was loaded.

    ``sha``: the file's hash when the caller computed it already (the driver does,
    once per study), so a trial does not re-hash a 1 GB file.
    """
    path = Path(path)
    state, layout, name, cfg = _checked_state(path, size)
    model = VisionTransformer(cfg)
    load_state_strict(model, state, source=str(path))
    return model, WeightsInfo(path, name, layout, sha or checkpoint_hash(path))


# ---------------------------------------------------------------- finding files already on disk
def cached_weights(size: str = "small") -> Path | None:
    """Released weights of ``size`` already on disk (never downloads), newest snapshot first.

    Looked up in order: timm's hub repo ``timm/vit_<size>_patch14_dinov2.lvd142m``,
    Hugging Face ``facebook/dinov2-<size>`` (by :func:`study.hub.cached_file`: the snapshot ``refs/main`` names,
    else the newest), torch hub's ``dinov2_vit<s|b|l>14_pretrain.pth``. ``--rgb-weights hf://...`` names any other
    Hub file (:func:`study.hub.resolve_weights`).
    """
    if size not in TIMM_NAMES:
        return None
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    for repo in (f"timm/{TIMM_NAMES[size]}.lvd142m", f"facebook/dinov2-{size}"):
        for fname in ("model.safetensors", "pytorch_model.bin"):
            found = cached_file(repo, fname)
            if found is not None:
                return found
    torch_file = torch_home / "hub" / "checkpoints" / f"dinov2_vit{_HUB_LETTER[size]}14_pretrain.pth"
    return torch_file if torch_file.is_file() else None


def missing_weights_message(size: str | None) -> str:
    """The one line that says how to provide weights (or opt out)."""
    name = TIMM_NAMES.get(size or "small", TIMM_NAMES["small"])
    return (
        "crossmodality needs pretrained DINOv2 weights and none were found: pass --rgb-weights PATH (a timm, "
        f"DINOv2-hub or Hugging Face .safetensors/.pth file), or place {name}.lvd142m in the Hugging Face cache "
        f"({hub_cache_dir()}/models--timm--{name}.lvd142m/snapshots/<rev>/model.safetensors); nothing is "
        "downloaded. Add --allow-random-init to train a randomly initialised ViT instead (not a transfer result)"
    )


@dataclass(frozen=True)
class RgbBackbone:
    """The crossmodality backbone a study uses, resolved once before Ray starts."""

    size: str
    weights: Path | None  # None: random init (only with --allow-random-init)
    sha: str | None
    layout: str | None

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def trial_config(self) -> dict[str, object]:
        """Constants every crossmodality trial gets: a path and a hash, never the tensors (as for HyperSL)."""
        return {"vit_size": self.size, "backbone_path": str(self.weights) if self.weights else None,
                "backbone_hash": self.sha, "allow_random_init": not self.pretrained}

    def describe(self) -> str:
        if self.weights is None:
            return f"DINOv2-architecture ViT-{self.size}, RANDOM init (--allow-random-init): not a transfer result"
        return f"DINOv2 ViT-{self.size} weights {self.weights} ({self.layout} layout, sha256 {self.sha})"


def resolve_rgb_backbone(weights: str | Path | None, size: str | None, allow_random_init: bool,
                         default_size: str) -> RgbBackbone:
    """Explicit weights, else released weights already in a hub cache, else random init if allowed.

    Raises ConfigError when nothing is found and random init was not allowed or
    ``--vit-size`` contradicts the file, HsiStudyError when a file is unreadable or
    does not fit the architecture; ``study.run`` turns both into one line and exit
    status 2, before Ray starts.
    """
    path = Path(weights).expanduser() if weights is not None else cached_weights(size or "small")
    if path is None:
        if not allow_random_init:
            raise ConfigError(missing_weights_message(size))
        return RgbBackbone(size or default_size, None, None, None)
    info = inspect_weights(path, size)
    return RgbBackbone(info.size, path.resolve(), info.sha, info.layout)
