"""HyperSL checkpoints in the released layout, loaded without executing pickled code.

Released layout (``docs/reference.md`` §R14): ``torch.save`` of
``{"epoch", "model", "optimizer", "scheduler"}`` where ``model`` is the full
encoder + decoder state dict saved under DataParallel, so every key starts with
``module.``. Ours are written the same way (plus a ``config`` entry of plain
numbers, which released consumers ignore), so either kind loads in either code.

Why ``weights_only=True`` always: a ``.pt`` file is a pickle, and unpickling
can run arbitrary code. A checkpoint downloaded from a drive link must not be
able to do that, so files that need more than tensors and plain containers are
refused. Safetensors files (no code by construction) are read and written by a
small built-in codec, so the ``safetensors`` package is not needed.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study.errors import HsiStudyError
from study.hashing import file_digest
from study.models.hypersl import SIZES, HyperSL, HyperSLConfig, build_hypersl
from study.store import atomic_write_bytes

PREFIX = "module."
_SHOW = 5  # how many offending keys an error message lists

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def checkpoint_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: the identity of a backbone in caches and result rows."""
    return file_digest(path, 16)


# ---------------------------------------------------------------- safetensors codec
def st_encode(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes: u64 header length, JSON header (8-byte aligned), raw little-endian data."""
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _ST_NAMES:
            raise HsiStudyError(f"cannot store tensor {name!r} of dtype {t.dtype} in safetensors")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _st_decode(data: bytes, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        body = memoryview(data)[8 + n :]
        meta = header.pop("__metadata__", {}) or {}
        out = {}
        for name, info in header.items():
            b, e = info["data_offsets"]
            dtype = _ST_DTYPES[info["dtype"]]
            chunk = bytearray(body[b:e])
            flat = torch.frombuffer(chunk, dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
            out[name] = flat.reshape(info["shape"])
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise HsiStudyError(f"{path}: not a valid safetensors file ({exc})") from None
    return out, meta


def _is_safetensors(path: Path, head: bytes) -> bool:
    return path.suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{" and not head.startswith(b"PK"))


# ---------------------------------------------------------------- reading
def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (``model`` etc.) from a ``.pt`` (weights_only) or safetensors file.

    A plain state dict (no ``model`` entry) is wrapped as ``{"model": ...}``.
    Raises HsiStudyError for missing, corrupt or code-carrying files.
    """
    path = Path(path)
    if not path.is_file():
        raise HsiStudyError(f"checkpoint {path} not found; pass the path of a HyperSL .pt or .safetensors file")
    with path.open("rb") as fh:
        head = fh.read(16)
    if _is_safetensors(path, head):
        tensors, meta = _st_decode(path.read_bytes(), path)
        ckpt: dict[str, Any] = {"model": tensors, "epoch": int(meta.get("epoch", 0))}
        if "config" in meta:
            ckpt["config"] = json.loads(meta["config"])
        return ckpt
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or (legacy) a pickle stream
        raise HsiStudyError(f"{path}: not a torch checkpoint or safetensors file (it starts with {head[:8]!r}, "
                            "expected a zip archive, a pickle stream or a safetensors header); is it truncated or "
                            "another format?")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", str(exc))
        what = f"it references {found.group(1)}" if found else str(exc).strip().splitlines()[-1][:160]
        raise HsiStudyError(
            f"{path}: refused: this checkpoint needs pickle to rebuild arbitrary Python objects ({what}), which "
            "could run code, so we refuse it for safety (torch.load weights_only=True). Fix: re-save it as a "
            "plain dict of tensors (torch.save({'model': model.state_dict()}, path)) or as safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises RuntimeError, EOFError, struct.error, ... on bad bytes
        raise HsiStudyError(f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc}); "
                            "is it truncated?") from None
    if not isinstance(obj, dict):
        raise HsiStudyError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    if "model" not in obj:
        obj = {"model": obj}
    if not isinstance(obj["model"], dict):
        raise HsiStudyError(f"{path}: the 'model' entry is a {type(obj['model']).__name__}, not a state dict")
    return obj


def strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the DataParallel ``module.`` prefix, as every HyperSL consumer does."""
    return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in state.items()}


def infer_config(state: dict[str, Tensor], heads: int | None = None) -> tuple[str | None, HyperSLConfig]:
    """(size name or None, config) from state-dict shapes; heads are not in the shapes.

    A named size is matched on (dim, encoder depth, decoder depth); anything
    else needs ``heads`` (or a ``config`` entry in the checkpoint).
    """
    if "global_token" not in state:
        raise HsiStudyError("not a HyperSL checkpoint: no 'global_token' key; keys start with "
                            + ", ".join(list(state)[:_SHOW]))
    dim = int(state["global_token"].shape[-1])
    enc = 1 + len({k.split(".")[1] for k in state if k.startswith("encoder_blocks.")})
    dec = 1 + len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    for name, cfg in SIZES.items():
        if (cfg.dim, cfg.encoder_depth, cfg.decoder_depth) == (dim, enc, dec) and heads in (None, cfg.heads):
            return name, cfg
    if heads is None:
        raise HsiStudyError(
            f"HyperSL checkpoint with dim {dim}, encoder depth {enc}, decoder depth {dec} matches no named size "
            f"({', '.join(SIZES)}); pass the number of attention heads explicitly"
        )
    return None, HyperSLConfig(dim=dim, heads=heads, encoder_depth=enc, decoder_depth=dec)


def mismatch_report(model: nn.Module, state: dict[str, Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}")
    return "; ".join(parts)


def load_state_strict(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)``, but a mismatch is one HsiStudyError listing the first offenders."""
    report = mismatch_report(model, state)
    if report:
        raise HsiStudyError(f"{source} does not fit {type(model).__name__}: {report}. Is it for another "
                            "architecture or size?")
    model.load_state_dict(state, strict=True)


def load_hypersl(path: str | Path, size: str | HyperSLConfig | None = None, heads: int | None = None) -> HyperSL:
    """A HyperSL built to the checkpoint's size with all weights loaded strictly (CPU, train mode).

    ``size`` forces a size (then shapes must fit); otherwise it is taken from
    the checkpoint's ``config`` entry or inferred from the shapes.
    """
    ckpt = read_checkpoint(path)
    state = strip_prefix(ckpt["model"])
    if size is not None:
        config = size if isinstance(size, HyperSLConfig) else build_hypersl(size).config
    elif isinstance(ckpt.get("config"), dict):
        try:
            config = HyperSLConfig(**ckpt["config"])
        except TypeError as exc:
            raise HsiStudyError(f"{path}: bad 'config' entry {ckpt['config']!r} ({exc})") from None
    else:
        try:
            config = infer_config(state, heads)[1]
        except HsiStudyError as exc:  # the shapes' story, said of the file the user gave
            raise HsiStudyError(f"{path}: {exc}") from None
    model = HyperSL(config)
    load_state_strict(model, state, source=f"{path}")
    return model


# ---------------------------------------------------------------- writing
def checkpoint_dict(model: HyperSL, epoch: int = 0, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> dict[str, Any]:
    """The released layout: ``module.``-prefixed full state dict plus training state when given."""
    out: dict[str, Any] = {"epoch": int(epoch), "model": {PREFIX + k: v.detach().cpu()
                                                          for k, v in model.state_dict().items()}}
    if optimizer is not None:
        out["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        out["scheduler"] = scheduler.state_dict()
    out["config"] = model.config.as_dict()
    return out


def save_checkpoint(model: HyperSL, path: str | Path, epoch: int = 0, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> Path:
    """Write a checkpoint atomically; ``.safetensors`` suffix -> safetensors (weights only), else torch.save."""
    path = Path(path)
    if path.suffix == ".safetensors":
        ckpt = checkpoint_dict(model, epoch)
        meta = {"epoch": str(int(epoch)), "config": json.dumps(ckpt["config"]), "format": "hypersl"}
        return atomic_write_bytes(path, st_encode(ckpt["model"], meta))
    buf = io.BytesIO()
    torch.save(checkpoint_dict(model, epoch, optimizer, scheduler), buf)
    return atomic_write_bytes(path, buf.getvalue())
