"""HyperSL: the spectral foundation model behind the cross-domain strategies.

A faithful re-implementation of ``SpectralSharedEncoder`` (``docs/reference.md``
§R11–§R14): one token per band from a multi-scale Conv1d stem, the
wavelength positional encoding on (λ−400)/10 with base 100, a learned global
token, ``encoder_depth − 1`` pre-LN ViT blocks and one final layer whose
attention sub-layer *drops the residual* (x = y + y) and also returns K, V for
the decoder. The per-pixel feature is global token + mean of the band tokens.

Why re-implement rather than import: the reference needs timm, which is not
installed; and the released weights only reproduce the published features if
every quirk is copied. Sub-module names equal the released checkpoint's keys
after stripping ``module.`` (§R14), so it loads strictly.

Deliberate differences from the reference, none of which changes a weight:
- with mask ratio 0 (feature extraction) the tokens are not randomly permuted:
  the output is permutation invariant, so the shuffle only cost time and noise;
- with mask ratio > 0 at least one band token is kept (the reference keeps
  ⌊L·(1−r)⌋, i.e. none for 15 bands at r = 0.95, which gives NaN features);
- attention runs through ``F.scaled_dot_product_attention`` (fused kernels).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.models.freezing import LayerGroup, group_parameters

#: Maximum band count: fixed by the shape of the stored ``pe`` parameter (1, 500, D).
MAX_BANDS = 500
#: How the stem's BatchNorms normalise outside pretraining: each export chunk's own batch statistics
#: (``chunk``, the paper's never-``eval()``-ed backbone) or the stored running statistics (``running``).
BN_MODES: tuple[str, ...] = ("chunk", "running")


@dataclass(frozen=True)
class HyperSLConfig:
    """Architecture hyper-parameters; ``encoder_depth`` counts the final layer too."""

    dim: int
    heads: int
    encoder_depth: int
    decoder_depth: int
    mlp_ratio: float = 4.0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


#: Named sizes. small/base/large/huge are the paper's (docs/reference.md §R13; only small has released weights);
#: ``cpu`` is the reduced default for the embedded study on 2 CPU cores (design.md §6: the
#: small encoder exports only ~150 px/s there); ``tiny`` is for tests and --smoke.
SIZES: dict[str, HyperSLConfig] = {
    "tiny": HyperSLConfig(dim=32, heads=2, encoder_depth=2, decoder_depth=2),
    "cpu": HyperSLConfig(dim=64, heads=4, encoder_depth=3, decoder_depth=2),
    "small": HyperSLConfig(dim=256, heads=8, encoder_depth=8, decoder_depth=4),
    "base": HyperSLConfig(dim=512, heads=16, encoder_depth=24, decoder_depth=12),
    "large": HyperSLConfig(dim=1024, heads=32, encoder_depth=32, decoder_depth=16),
    "huge": HyperSLConfig(dim=2048, heads=32, encoder_depth=48, decoder_depth=24),
}


class Attention(nn.Module):
    """timm-style multi-head self-attention (``qkv``, ``proj``) that can also return K and V."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"`dim % heads == 0` must hold, got dim={dim}, heads={heads}")
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward_kv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, T, C) -> output (N, T, C), K and V (N, heads, T, C/heads)."""
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, t, c)), k, v

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_kv(x)[0]


class Mlp(nn.Module):
    """timm ``Mlp``: fc1 -> GELU -> fc2 (no dropout: the reference uses none)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm ViT ``Block`` as HyperSL builds it: pre-LN, qkv bias, MLP ratio 4, no drop-path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FinalLayer(Block):
    """The last encoder layer (``transformer_encoder_layer``) with the dropped-residual quirk.

    The reference computes ``x, k, v = attn(norm1(x)); x = x + x``: the block's
    input is discarded and the attention output doubled. Released weights were
    trained through this, so it is kept verbatim.
    """

    def forward_kv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, k, v = self.attn.forward_kv(self.norm1(x))
        x = y + y
        return x + self.mlp(self.norm2(x)), k, v

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_kv(x)[0]


class CrossAttention(nn.Module):
    """Decoder "cross-attention" (``corss_attn``): the feature z queries the band tokens' K, V.

    Unlike ordinary attention the softmax weights *scale* each V token instead
    of being summed over, giving one output per visible band (§R12); hence a
    hand-written product, not ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim, bias=True)  # only q, despite the name (reference spelling)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """z (N, 1, C), k/v (N, heads, 1+L', C/heads) incl. the global token -> (N, L', C)."""
        n, _, c = z.shape
        q = self.qkv(z).reshape(n, 1, self.num_heads, c // self.num_heads).transpose(1, 2)
        k, v = k[:, :, 1:], v[:, :, 1:]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (N, h, 1, L')
        x = (attn.transpose(-1, -2) * v).transpose(1, 2).reshape(n, -1, c)
        return self.proj(x)


def _stem_branch(dim: int, kernel: int, in_channels: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(in_channels, dim, kernel, stride=1, padding="same"), nn.BatchNorm1d(dim), nn.GELU())


class HyperSL(nn.Module):
    """HyperSL encoder + masked-modelling decoder (the reference ``SpectralSharedEncoder``).

    ``features(x, wavelengths)`` is what downstream code uses: spectra (N, L)
    with centre wavelengths (L,) or (N, L) in nm -> one D-dim vector per spectrum.
    ``forward`` is the pretraining pass (features + reconstruction in [0, 1]).
    """

    def __init__(self, config: HyperSLConfig) -> None:
        super().__init__()
        if config.encoder_depth < 1 or config.decoder_depth < 1 or config.dim % 2:
            raise ValueError(f"HyperSL needs depths >= 1 and an even dim, got {config}")
        self.config = config
        d, h, r = config.dim, config.heads, config.mlp_ratio
        self.global_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.embedding_layer_1 = _stem_branch(d, 5)
        self.embedding_layer_2 = _stem_branch(d, 9)
        self.embedding_layer_3 = _stem_branch(d, 13)
        self.embedding_layer_4 = _stem_branch(d, 1, in_channels=3 * d)
        self.div_term = nn.Parameter(torch.exp(torch.arange(0, d, 2) * -(math.log(100.0) / d)), requires_grad=False)
        self.pe = nn.Parameter(torch.zeros(1, MAX_BANDS, d), requires_grad=False)
        self.encoder_blocks = nn.ModuleList(Block(d, h, r) for _ in range(config.encoder_depth - 1))
        self.transformer_encoder_layer = FinalLayer(d, h, r)
        self.corss_attn = CrossAttention(d, h)
        self.decoder_blocks = nn.ModuleList(Block(d, h, r) for _ in range(config.decoder_depth - 1))
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.decoder_layer = nn.Sequential(nn.Conv1d(d, 1, 3, stride=1, padding="same"), nn.Sigmoid())
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference init: tokens N(0, .02), convs Kaiming-uniform, linears Xavier, LN 1/0."""
        nn.init.normal_(self.global_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                (nn.init.kaiming_uniform_ if isinstance(m, nn.Conv1d) else nn.init.xavier_uniform_)(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def layer_groups(self) -> list[LayerGroup]:
        """Ordered layer groups for freeze depth k (:mod:`study.models.freezing`): [stem], [block 0], ..., [final].

        The stem group is the tokeniser (four conv branches) with the global token:
        it is part of the tokens a frozen prefix produces. ``pe``/``div_term`` are
        in no group (never trained), nor is the decoder (unused downstream).
        """
        stem = [self.embedding_layer_1, self.embedding_layer_2, self.embedding_layer_3, self.embedding_layer_4,
                self.global_token]
        return [stem, *([b] for b in self.encoder_blocks), [self.transformer_encoder_layer]]

    @property
    def dim(self) -> int:
        return self.config.dim

    # ---- encoder pieces (also used by freeze depth k > 0: study.models.hypersl_partial) ----
    def _check(self, x: Tensor, wavelengths: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 2:
            raise ValueError(f"HyperSL expects spectra (N, L) or (N, 1, L), got shape {tuple(x.shape)}")
        n, length = x.shape
        wl = torch.as_tensor(wavelengths, device=x.device)
        if wl.shape[-1] != length or wl.ndim not in (1, 2) or (wl.ndim == 2 and wl.shape[0] not in (1, n)):
            raise ValueError(f"wavelengths of shape {tuple(wl.shape)} do not fit spectra of shape {(n, length)}")
        if not 1 <= length <= self.pe.shape[1]:
            raise ValueError(f"HyperSL takes 1..{self.pe.shape[1]} bands, got {length}")
        return x.to(self.div_term.dtype), wl.to(self.div_term.dtype)

    def positional_encoding(self, wavelengths: Tensor) -> Tensor:
        """(L,) or (N, L) nm -> (1 or N, L, D): sin/cos of (λ−400)/10 with base 100 (§R11)."""
        pos = ((wavelengths - 400.0) / 10.0).reshape(-1, wavelengths.shape[-1], 1)
        pe = torch.empty(pos.shape[0], pos.shape[1], self.dim, dtype=pos.dtype, device=pos.device)
        pe[..., 0::2] = torch.sin(self.div_term * pos)
        pe[..., 1::2] = torch.cos(self.div_term * pos)
        return pe

    def embed(self, x: Tensor) -> Tensor:
        """Multi-scale stem: spectra (N, L) -> band tokens (N, L, D) (BN statistics over N x L)."""
        x = x.unsqueeze(1)
        x = torch.cat([self.embedding_layer_1(x), self.embedding_layer_2(x), self.embedding_layer_3(x)], dim=1)
        return self.embedding_layer_4(x).transpose(1, 2)

    def random_masking(self, x: Tensor, mask_ratio: float,
                       ids_shuffle: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """MAE masking by argsort of uniform noise: kept tokens (N, L', D) and ids_restore (N, L)."""
        n, length, d = x.shape
        keep = max(1, int(length * (1.0 - mask_ratio)))
        if ids_shuffle is None:
            ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, ids_restore

    def tokens(self, x: Tensor, wavelengths: Tensor, mask_ratio: float = 0.0,
               mask_input: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Stem + PE (+ masking) + global token: (N, 1+L', D), the PE and ids_restore (None if r = 0).

        ``mask_input`` (a pretraining option, not the reference): the masked bands
        are also zeroed in the spectrum *before* the stem, whose kernels (up to 13
        bands) otherwise let every visible token see its masked neighbours.
        """
        x, wl = self._check(x, wavelengths)
        pe = self.positional_encoding(wl)
        ids_restore = ids_shuffle = None
        if mask_ratio > 0:
            ids_shuffle = torch.argsort(torch.rand(x.shape, device=x.device), dim=1)
            if mask_input:
                keep = max(1, int(x.shape[1] * (1.0 - mask_ratio)))
                visible = torch.zeros_like(x).scatter_(1, ids_shuffle[:, :keep], 1.0)
                x = x * visible
        t = self.embed(x) + pe
        if ids_shuffle is not None:
            t, ids_restore = self.random_masking(t, mask_ratio, ids_shuffle)
        t = torch.cat([self.global_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)
        return t, pe, ids_restore

    def run_blocks(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All encoder layers (blocks + final layer) on tokens (N, 1+L', D) -> tokens, K, V."""
        for block in self.encoder_blocks:
            h = block(h)
        return self.transformer_encoder_layer.forward_kv(h)

    @staticmethod
    def aggregate(h: Tensor) -> Tensor:
        """Global token + mean of the band tokens: (N, 1+L', D) -> (N, D); no final LayerNorm."""
        return h[:, 0] + h[:, 1:].mean(dim=1)

    def features(self, x: Tensor, wavelengths: Tensor) -> Tensor:
        """Per-spectrum features (N, D) with mask ratio 0, the downstream/export path."""
        h, _, _ = self.tokens(x, wavelengths)
        return self.aggregate(self.run_blocks(h)[0])

    def decode(self, z: Tensor, k: Tensor, v: Tensor, pe: Tensor, ids_restore: Tensor | None) -> Tensor:
        """Reconstruct the full spectrum (N, L) in [0, 1] from z (N, D) and the final layer's K, V."""
        x = self.norm1(self.corss_attn(z[:, None], k, v))
        if ids_restore is not None:
            n, length = ids_restore.shape
            x = torch.cat([x, self.mask_token.to(x.dtype).expand(n, length - x.shape[1], -1)], dim=1)
            x = torch.gather(x, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = x + pe
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_layer(self.norm2(x).transpose(1, 2))[:, 0]

    def decode_from_feature(self, z: Tensor, pe: Tensor) -> Tensor:
        """Reconstruct the full spectrum (N, L) from z (N, D) alone (a pretraining option, not the reference).

        The existing decoder with the cross-attention bypassed: every band position
        gets ``norm1(proj(z)) + pe``, so all the spectrum's information must pass
        through z. Uses only existing sub-modules, so the state dict is unchanged.
        """
        x = self.norm1(self.corss_attn.proj(z))[:, None] + pe
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_layer(self.norm2(x).transpose(1, 2))[:, 0]

    def forward(self, x: Tensor, wavelengths: Tensor, mask_ratio: float = 0.0,
                mask_input: bool = False) -> tuple[Tensor, Tensor]:
        """Pretraining pass: features z (N, D) and the reconstruction (N, L)."""
        h, pe, ids_restore = self.tokens(x, wavelengths, mask_ratio, mask_input)
        h, k, v = self.run_blocks(h)
        z = self.aggregate(h)
        return z, self.decode(z, k, v, pe, ids_restore)


def build_hypersl(size: str | HyperSLConfig = "cpu") -> HyperSL:
    """HyperSL of a named size (:data:`SIZES`) or an explicit config."""
    if isinstance(size, HyperSLConfig):
        return HyperSL(size)
    if size not in SIZES:
        raise ValueError(f"unknown HyperSL size {size!r}; valid: {', '.join(SIZES)}")
    return HyperSL(SIZES[size])


def masked_modelling_loss(recon: Tensor, target: Tensor) -> Tensor:
    """HyperSL's pretraining loss over all bands: MSE + (1 − cosine similarity), weights 1 (§R12)."""
    return F.mse_loss(recon, target) + (1.0 - F.cosine_similarity(recon, target, dim=-1)).mean()


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements (``pe``/``div_term`` count only with trainable_only=False)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def downstream_parameters(model: HyperSL) -> int:
    """Parameters used for features: stem + encoder layers + global token (6.52 M for small)."""
    return sum(p.numel() for g in model.layer_groups() for p in group_parameters(g))
