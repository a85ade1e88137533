"""HyperSL with freeze depth k > 0: the frozen prefix runs without grad, the last k layer groups train.

Why a wrapper and not ``HyperSL.features``: with k > 0 a trial runs the backbone
itself on raw spectra (the feature cache only holds k = 0 outputs), and it must
produce exactly the features the cache export produces for the same weights, or
the k = 0 and k > 0 arms of one search would see different inputs. So the stem's
BatchNorms never run in train mode here: they normalise with *given* statistics,
the BN buffers (``bn_mode="running"``) or each pixel's export-chunk statistics
(``"chunk"``, a table recomputed by :meth:`PartialHyperSL.refresh_stats`); each
pixel carries its chunk id. Details and measurements: ``docs/freeze_depth.md``.

Precision: the stem and the frozen prefix are what the k = 0 cache holds, an fp32 export, so they run in
IEEE fp32 outside the trial's bf16 autocast (:func:`study.models.precision.full_precision`), and so do the
chunk statistics; only the trainable blocks follow the trial's autocast, as the head on cached features does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from study.models.freezing import set_trainable_depth
from study.models.hypersl import BN_MODES, HyperSL
from study.models.precision import full_precision

#: BatchNorms in the stem (three conv branches + the 1x1 fuse), in forward order.
N_STEM_BN = 4
#: Pixels per chunk of a no-grad (evaluation) forward: bounds memory, results do not depend on it (float
#: noise). A pixel's transformer pass holds ~90 KB of transients at D = 64 (26 tokens x 4 x D MLP, qkv,
#: attention), so 16,384 pixels took 1.5 GiB and OOM-killed k > 0 trials under a 2.5 GiB study cap; 2,048
#: take ~0.2 GiB at the same speed (performance.md "Memory").
EVAL_CHUNK = 2_048
#: Pixels per gradient-checkpointed chunk when more pixels need gradients at once: the activations of only
#: one chunk are alive in backward (~120 KB per pixel and trainable block at D = 64). Was 8,192 (the FC
#: sub-batch in one piece: +1.1 GiB for k = 1; 1,024: +0.5 GiB); a chunk's forward runs twice (forward, recompute).
GRAD_CHUNK = 1_024


def chunks_per_image(height: int, width: int, chunk_size: int) -> int:
    """Export chunks of one image: its pixels in raster order, ``chunk_size`` at a time (the last one shorter)."""
    return -(-height * width // chunk_size)


def _stem_branch(seq: nn.Sequential, x: Tensor, stats: Tensor | None, collect: list[Tensor] | None) -> Tensor:
    """conv -> BN (with given statistics) -> GELU on (N, Cin, L).

    ``stats`` (N, 2, D) per-pixel (mean, var), or None for the running buffers;
    with ``collect`` the input's own batch statistics over N x L are used and
    appended (train-mode BN of one export chunk; biased variance as in BN).
    """
    conv, bn, act = seq
    a = conv(x)
    if collect is not None:
        mean, var = a.mean(dim=(0, 2)), a.var(dim=(0, 2), unbiased=False)
        collect.append(torch.stack([mean, var]))
    elif stats is None:
        mean, var = bn.running_mean, bn.running_var
    else:
        mean, var = stats[:, 0], stats[:, 1]
    a = (a - mean[..., None]) * torch.rsqrt(var[..., None] + bn.eps)
    return act(a * bn.weight[:, None] + bn.bias[:, None])


def embed_with_stats(model: HyperSL, x: Tensor, stats: Tensor | None = None,
                     collect: list[Tensor] | None = None) -> Tensor:
    """HyperSL's multi-scale stem on spectra (N, L) -> band tokens (N, L, D), BN from ``stats`` (N, 4, 2, D)."""
    x = x.unsqueeze(1)
    branches = (model.embedding_layer_1, model.embedding_layer_2, model.embedding_layer_3)
    parts = [_stem_branch(b, x, None if stats is None else stats[:, i], collect) for i, b in enumerate(branches)]
    fused = _stem_branch(model.embedding_layer_4, torch.cat(parts, dim=1),
                         None if stats is None else stats[:, 3], collect)
    return fused.transpose(1, 2)


@torch.no_grad()
def chunk_stats(model: HyperSL, spectra: Tensor) -> Tensor:
    """(mean, var) of every stem BN input over one export chunk of spectra (n, L): (4, 2, D)."""
    collect: list[Tensor] = []
    with full_precision(spectra.device):  # the export's statistics: fp32, whatever autocast is around
        embed_with_stats(model, spectra.to(model.div_term.dtype), collect=collect)
    return torch.stack(collect)


class PartialHyperSL(nn.Module):
    """Per-pixel features (P, C) + chunk ids (P,) -> (P, D) with the last ``k`` layer groups trainable.

    ``k = 0`` (everything frozen) is a k = 0 trial computing its features (``--features compute``): the whole
    forward runs under ``no_grad`` in ``eval_chunk`` pieces, as in evaluation. The frozen prefix runs under
    ``no_grad`` (not ``inference_mode``: its output feeds layers that save it for backward). With gradients on
    and more than ``grad_chunk`` pixels the pixels run in gradient-checkpointed chunks.
    """

    def __init__(self, hypersl: HyperSL, k: int, wavelengths: np.ndarray | Tensor, bn_mode: str = "chunk",
                 grad_chunk: int = GRAD_CHUNK, eval_chunk: int = EVAL_CHUNK) -> None:
        super().__init__()
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        self.n_groups = len(hypersl.layer_groups())
        set_trainable_depth(hypersl, k)  # validates 0 <= k <= n_groups
        self.hypersl, self.k, self.bn_mode = hypersl, k, bn_mode
        self.grad_chunk, self.eval_chunk = grad_chunk, eval_chunk
        self.register_buffer("wavelengths", torch.as_tensor(np.asarray(wavelengths, dtype=np.float32)),
                             persistent=False)
        # per-chunk BN statistics: derived data, recomputed from the weights, so not in the state dict
        self.register_buffer("stats", torch.zeros(0, N_STEM_BN, 2, hypersl.dim), persistent=False)
        self._sources: list[np.ndarray] = []
        self._chunk_size = 0
        self._cache: Any = None
        #: k = 0 features rounded to this dtype and back (the feature cache's storage, ``--feature-dtype``), so a
        #: trial that computes them (``--features compute``) trains on the features the cache would hold
        self.store_dtype: torch.dtype | None = None

    @property
    def stem_trainable(self) -> bool:
        return self.k == self.n_groups

    @property
    def dim(self) -> int:
        return self.hypersl.dim

    # ---- chunk statistics
    def set_sources(self, images: list[np.ndarray], chunk_size: int, cache: Any = None) -> None:
        """Raw images (N, H, W, C) of every split in chunk-id order (``study.train.raw_spectra.chunk_id_map``).

        ``cache`` (``study.train.raw_spectra.StatsCache``: ``load(i, shape) -> Tensor | None``, ``save(i, rows)``)
        keeps each source's rows on disk for the next trial; used only while the stem is frozen (the rows of a
        trainable stem follow its weights)."""
        self._sources, self._chunk_size, self._cache = list(images), int(chunk_size), cache

    def _n_chunks(self) -> int:
        return sum(self._source_chunks(images) for images in self._sources)

    def _source_chunks(self, images: Any) -> int:
        return sum(chunks_per_image(h, w, self._chunk_size) for h, w in _image_shapes(images))

    @torch.no_grad()
    def refresh_stats(self) -> None:
        """Recompute the per-chunk statistics table from the sources with the current stem (chunk mode only),
        or read a frozen stem's rows of a source from the cache when an earlier trial stored them.

        Rows are written into one preallocated table, not kept as one small tensor each and stacked: each
        small tensor allocated between the stem's transients (tens of MB) pinned ~12 MB of glibc heap, so
        the table of 9 HSI-Drive-sized images (162 chunks) took +2.1 GB and grew with the data (performance.md §7).
        """
        if self.bn_mode != "chunk":
            return
        device = self.wavelengths.device
        table = torch.empty(self._n_chunks(), N_STEM_BN, 2, self.hypersl.dim, device=device)
        cache = None if self.stem_trainable else self._cache
        row = 0
        for i, images in enumerate(self._sources):
            part = table[row : row + self._source_chunks(images)]
            hit = cache.load(i, tuple(part.shape)) if cache is not None else None
            if hit is not None:
                part.copy_(hit)
            else:
                self._fill(images, part)
                if cache is not None:
                    cache.save(i, part)
            row += len(part)
        self.stats = table

    def _fill(self, images: Any, part: Tensor) -> None:
        """Write the statistics of every chunk of ``images`` (one source), in order, into ``part``."""
        cs, row = self._chunk_size, 0
        for image in images:
            flat = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32).reshape(-1, image.shape[-1]))
            for s in range(0, len(flat), cs):
                if row >= len(part):
                    raise RuntimeError("chunk statistics: more chunks read than expected from the shapes")
                part[row] = chunk_stats(self.hypersl, flat[s : s + cs].to(part.device))
                row += 1
        if row != len(part):
            raise RuntimeError(f"chunk statistics: {row} chunks read, {len(part)} expected from the shapes")

    # ---- forward
    def _tokens(self, x: Tensor, ids: Tensor) -> Tensor:
        m = self.hypersl
        x, wl = m._check(x, self.wavelengths)
        stats = self.stats[ids] if self.bn_mode == "chunk" else None
        t = embed_with_stats(m, x, stats) + m.positional_encoding(wl)
        return torch.cat([m.global_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)

    def _blocks(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The transformer layers (groups 1..; group 0 is the stem), split into (frozen, trainable)."""
        m = self.hypersl
        blocks = [*m.encoder_blocks, m.transformer_encoder_layer]
        n_frozen = len(blocks) - min(self.k, len(blocks))
        return blocks[:n_frozen], blocks[n_frozen:]

    def prefix(self, x: Tensor, ids: Tensor) -> Tensor:
        """Tokens (P, 1+L, D) after the stem and the frozen blocks: fp32 (IEEE on CUDA) under any autocast,
        so that they are the k = 0 export's tokens (the stem keeps its gradient when it trains)."""
        frozen, _ = self._blocks()
        with full_precision(x.device):
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.stem_trainable):
                h = self._tokens(x.float(), ids)
            with torch.no_grad():
                for block in frozen:
                    h = block(h)
        return h

    def _features(self, x: Tensor, ids: Tensor) -> Tensor:
        h = self.prefix(x, ids)
        trainable = self._blocks()[1]
        if not trainable:  # k = 0: the aggregate is the export's too, fp32 under any autocast
            with full_precision(x.device):
                z = self.hypersl.aggregate(h)
            return z if self.store_dtype is None else z.to(self.store_dtype).float()
        for block in trainable:  # the trainable blocks: the trial's autocast
            h = block(h)
        return self.hypersl.aggregate(h)

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        """Spectra (P, C) and chunk ids (P,) int64 -> features (P, D)."""
        if self.bn_mode == "chunk" and self.stats.shape[0] == 0:
            raise RuntimeError("chunk-mode statistics are missing: call set_sources() and refresh_stats() first")
        if self.k == 0:  # nothing trains: no graph whatever the caller's mode (a head trains on constants)
            with torch.no_grad():
                return self._no_grad(x, ids)
        if not torch.is_grad_enabled():
            return self._no_grad(x, ids)
        if len(x) <= self.grad_chunk:
            return self._features(x, ids)
        step = self.grad_chunk
        return torch.cat([checkpoint(self._features, x[s : s + step], ids[s : s + step], use_reentrant=False)
                          for s in range(0, len(x), step)])

    def _no_grad(self, x: Tensor, ids: Tensor) -> Tensor:
        """Features of ``x`` in :attr:`eval_chunk`-pixel chunks written into one output (no list of pieces plus
        its cat)."""
        step, out = self.eval_chunk, None
        for s in range(0, len(x), step):
            z = self._features(x[s : s + step], ids[s : s + step])
            out = z.new_empty((len(x), z.shape[1])) if out is None else out
            out[s : s + len(z)] = z
        return out if out is not None else x.new_empty((0, self.dim))


def _image_shapes(images: Any) -> list[tuple[int, int]]:
    """(H, W) of every image of a source: its split's ``shapes`` when lazy, else read off the arrays."""
    shapes = getattr(images, "shapes", None)
    return [tuple(s) for s in shapes] if shapes is not None else [tuple(im.shape[:2]) for im in images]


def _split_ids(x: Tensor) -> tuple[Tensor, Tensor]:
    """Last channel = export chunk id (float32, exact below 2^24) -> (spectra, ids int64)."""
    return x[..., :-1], x[..., -1].round().long()


class BackbonePixelFC(nn.Module):
    """HyperSL-FC with k > 0: pixels (P, C+1) (spectra + chunk id) -> HyperSL features -> head -> (P, K)."""

    def __init__(self, backbone: PartialHyperSL, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        spectra, ids = _split_ids(x)
        return self.head(self.backbone(spectra, ids))


class BackboneRUNet(nn.Module):
    """HyperSL-RU-Net with k > 0: images (B, C+1, H, W) -> per-pixel features (B, D, H, W) -> RU-Net logits."""

    def __init__(self, backbone: PartialHyperSL, runet: nn.Module) -> None:
        super().__init__()
        self.backbone, self.runet = backbone, runet

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        spectra, ids = _split_ids(x.permute(0, 2, 3, 1).reshape(b * h * w, -1))
        z = self.backbone(spectra, ids)
        return self.runet(z.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
