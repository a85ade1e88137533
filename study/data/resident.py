"""Resident placements of a trial's splits (``--data-placement device | memory``): every sample held whole,
batches gathered from there in the plan's order; no loader workers, no file read after the first.

- ``device``: the samples live in tensors on the trial's device, read from the files once. On CUDA no batch
  crosses from the host: gathering, crops and flips happen there, and a pca file keeps its scores there,
  decoded per batch with :func:`study.data.stream.decode_batch` (D of C channels held: what makes HCV2 fit).
- ``memory``: one host copy per node in shared memory (:mod:`study.data.shared_copy`), written once and mapped
  by every trial of the node; batches are gathered from it into (pinned, on CUDA) host tensors.

On CUDA a ``device`` batch's labels are on the device too: the image epoch's unlabelled-batch check and the
per-pixel loop's sub-batch check read them back (one flag per step, the labels per image: no images cross).

Why the values equal the stream's to the bit: images are kept as the file stores them (float32, float16 or
bfloat16: :attr:`study.data.bundle.SplitRef.value_dtype`) and widened exactly per batch; labels are kept as
int16 (every remapped label is below the class count) and widened; a pca file is decoded where the stream
decodes it: with ``decode_batch`` on the decode device, else on the host with the reader's ``pca_decode``, whole
image first, then the window. Samples of one split may differ in size: each has its offset in flat arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from study.data.bundle import Split
from study.data.shared_copy import Section, SharedCopy, open_copy
from study.data.storage import from_bfloat16_bits, pca_decode, to_bfloat16_bits
from study.data.stream import Key, LoaderSettings, SplitBatches, decode_batch
from study.hashing import json_digest

#: how each kept value type is held: numpy (bfloat16 as its uint16 bits) and torch
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int16": np.int16}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int16": torch.int16}
#: bump when what a copy holds or how it is laid out changes (it keys the node's shared copies)
COPY_VERSION = 1


@dataclass(frozen=True)
class Layout:
    """What a resident split holds: per-sample (H, W), values per pixel as kept (C, or the D scores of a pca file)
    and their type, the images' channels C, whether per-sample pca coefficients and means come too."""

    shapes: tuple[tuple[int, int], ...]
    channels: int
    dtype: str
    out_channels: int
    pca: bool = False

    @property
    def pixel_offsets(self) -> list[int]:
        """First pixel of each sample in the flat arrays (one more entry: the total)."""
        return [0, *np.cumsum([h * w for h, w in self.shapes]).tolist()]

    def sections(self) -> list[Section]:
        """The flat arrays: values (pixels x channels), labels (pixels) and, for pca, coefficients and means."""
        n, px = len(self.shapes), self.pixel_offsets[-1]
        out = [Section("values", np.dtype(NUMPY_DTYPES[self.dtype]).name, px * self.channels),
               Section("labels", "int16", px)]
        if self.pca:
            out += [Section("coeffs", "float32", n * self.channels * self.out_channels),
                    Section("means", "float32", n * self.out_channels)]
        return out

    @property
    def nbytes(self) -> int:
        return sum(s.count * np.dtype(s.dtype).itemsize for s in self.sections())


def layout_of(split: Split) -> Layout:
    """The layout of ``split`` kept resident (a pca file's first sample is read for its score count and type)."""
    if getattr(split, "storage_format", "cube") == "pca":
        scores = split.read_stored(0)[0]  # type: ignore[attr-defined]
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                 np.dtype(np.uint16): "bfloat16"}[scores.dtype]
        return Layout(tuple(split.shapes), int(scores.shape[-1]), dtype, int(split.n_channels), pca=True)
    return Layout(tuple(split.shapes), int(split.n_channels), str(getattr(split, "value_dtype", "float32")),
                  int(split.n_channels))


def copy_key(split: Split, lay: Layout) -> str | None:
    """The name of ``split``'s shared copy: its identity (file, names: ``split.identity()``) and layout; None for
    a split without one (arrays in memory: kept privately)."""
    identity = getattr(split, "identity", None)
    ident = identity() if callable(identity) else None
    if ident is None:
        return None
    return json_digest({"split": ident, "layout": [lay.shapes, lay.channels, lay.dtype, lay.out_channels,
                                                        lay.pca], "version": COPY_VERSION}, 24)


def fill_arrays(split: Split, lay: Layout, arrays: dict[str, Any],
                write: Callable[[Any, int, np.ndarray], None]) -> None:
    """Read every sample once and ``write(array, start, values)`` it into the flat arrays."""
    offsets = lay.pixel_offsets
    for i in range(len(split)):
        p0, p1 = offsets[i], offsets[i + 1]
        if lay.pca:
            scores, coeffs, means, labels = split.read_stored(i)  # type: ignore[attr-defined]
            values = scores
            d, c = lay.channels, lay.out_channels
            write(arrays["coeffs"], i * d * c, np.ascontiguousarray(coeffs, dtype=np.float32).ravel())
            write(arrays["means"], i * c, np.ascontiguousarray(means, dtype=np.float32).ravel())
        else:
            image, labels = split.read(i)
            values = _narrow(image, lay.dtype)
        if values.size != (p1 - p0) * lay.channels or labels.size != p1 - p0:
            raise ValueError(f"sample {i} is not the size the split records ({lay.shapes[i]})")
        if int(labels.min(initial=0)) < -(2**15) or int(labels.max(initial=0)) >= 2**15:
            raise ValueError(f"sample {i} has label ids beyond int16; keep this split with --data-placement stream")
        write(arrays["values"], p0 * lay.channels, np.ascontiguousarray(values).ravel())
        write(arrays["labels"], p0, labels.astype(np.int16).ravel())


def _narrow(image: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 image as kept (exact: the file held these values in ``dtype``)."""
    if dtype == "float32":
        return image
    kept = image.astype(np.float16) if dtype == "float16" else to_bfloat16_bits(image)
    back = kept.astype(np.float32) if dtype == "float16" else from_bfloat16_bits(kept)
    if not np.array_equal(back, image, equal_nan=True):
        raise ValueError(f"the split's values are not all {dtype}: its record says they are")
    return kept


def _write_numpy(array: np.ndarray, start: int, values: np.ndarray) -> None:
    array[start : start + values.size] = values


def _as_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A numpy array as a tensor sharing its memory (bfloat16 from its uint16 bits)."""
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def device_store(split: Split, lay: Layout, device: torch.device) -> dict[str, torch.Tensor]:
    """The split read once into tensors on ``device`` (sample by sample: the host never holds the whole split)."""
    sections = lay.sections()
    store = {s.name: torch.empty(s.count, dtype=TORCH_DTYPES[lay.dtype if s.name == "values" else s.dtype],
                                 device=device) for s in sections}

    def write(t: torch.Tensor, start: int, values: np.ndarray) -> None:
        src = _as_torch(np.ascontiguousarray(values), "bfloat16" if t.dtype == torch.bfloat16 else "")
        t[start : start + values.size].copy_(src)

    fill_arrays(split, lay, store, write)
    return store


def memory_store(split: Split, lay: Layout) -> tuple[dict[str, torch.Tensor], SharedCopy | None]:
    """The split as host tensors over the node's shared copy (written now if the node has none); a split without
    an identity is read into private memory instead."""
    key = copy_key(split, lay)
    if key is None:
        arrays = {s.name: np.empty(s.count, dtype=s.dtype) for s in lay.sections()}
        fill_arrays(split, lay, arrays, _write_numpy)
        copy = None
    else:
        copy = open_copy(key, lay.sections(), lambda a: fill_arrays(split, lay, a, _write_numpy))
        arrays = copy.arrays
    return {n: _as_torch(a, lay.dtype if n == "values" else "") for n, a in arrays.items()}, copy


class ResidentStream(SplitBatches):
    """One split held whole (:func:`device_store` or :func:`memory_store`), with :class:`SplitStream`'s interface:
    :meth:`batches` gathers a plan of keys in its order, :meth:`sequential` walks the split."""

    def __init__(self, split: Split, settings: LoaderSettings, placement: str, device: torch.device) -> None:
        self.split, self.placement = split, placement
        self.layout = lay = layout_of(split)
        self._copy: SharedCopy | None = None
        if placement == "device":
            self.store, self.out_device = device_store(split, lay, device), device
        elif placement == "memory":
            self.store, self._copy = memory_store(split, lay)
            self.out_device = torch.device("cpu")
        else:
            raise ValueError(f"a resident placement is device or memory, not {placement!r}")
        self.pin = settings.pin_memory and self.out_device.type == "cpu"
        self.decode_device = torch.device(settings.decode_device) if lay.pca and settings.decode_device else None
        self.offsets = lay.pixel_offsets

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes

    def batches(self, plan: Iterable[Sequence[Key]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images (B, h, w, C) float32, labels (B, h, w) int64) in plan order, as the stream yields them: on the
        device for ``device``, on the host (pinned on CUDA) for ``memory``; decoded pca images on the decode
        device."""
        for keys in [list(b) for b in plan]:
            yield self.gather(keys)

    def _window(self, key: Key) -> tuple[int, int, int, int, int, int, int]:
        """(index, row, col, h, w, full H, full W) of a key."""
        i = int(key[0]) if isinstance(key, tuple) else int(key)
        height, width = self.layout.shapes[i]
        r, c, h, w = (int(v) for v in key[1:]) if isinstance(key, tuple) else (0, 0, height, width)
        return i, r, c, h, w, height, width

    def _sample(self, name: str, i: int, per_pixel: int, height: int, width: int) -> torch.Tensor:
        p0 = self.offsets[i]
        return self.store[name][p0 * per_pixel : (p0 + height * width) * per_pixel].view(height, width, per_pixel)

    def gather(self, keys: Sequence[Key]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: every key's (window of its) sample copied into fresh tensors (the loop flips in place)."""
        wins = [self._window(k) for k in keys]
        _, _, _, h, w, _, _ = wins[0]
        if any((win[3], win[4]) != (h, w) for win in wins):
            raise RuntimeError("a batch's samples differ in size; batch them one at a time")
        lay, b = self.layout, len(keys)
        labels = torch.empty((b, h, w), dtype=torch.int64, device=self.out_device, pin_memory=self.pin)
        for j, (i, r, c, hh, ww, height, width) in enumerate(wins):
            labels[j].copy_(self._sample("labels", i, 1, height, width)[r : r + hh, c : c + ww, 0])
        if lay.pca and self.decode_device is not None:
            return self._decode_on_device(wins, h, w), labels
        images = torch.empty((b, h, w, lay.out_channels), dtype=torch.float32, device=self.out_device,
                             pin_memory=self.pin)
        for j, (i, r, c, hh, ww, height, width) in enumerate(wins):
            if lay.pca:
                images[j].copy_(torch.from_numpy(self._decode_on_host(i, height, width)[r : r + hh, c : c + ww]))
            else:
                images[j].copy_(self._sample("values", i, lay.channels, height, width)[r : r + hh, c : c + ww])
        return images, labels

    def _decode_on_device(self, wins: list[tuple[int, ...]], h: int, w: int) -> torch.Tensor:
        """Scores, coefficients and means of the batch gathered as stored, decoded by ``decode_batch``."""
        lay, b = self.layout, len(wins)
        d, c = lay.channels, lay.out_channels
        scores = torch.empty((b, h, w, d), dtype=TORCH_DTYPES[lay.dtype], device=self.out_device, pin_memory=self.pin)
        coeffs = torch.empty((b, d, c), dtype=torch.float32, device=self.out_device, pin_memory=self.pin)
        means = torch.empty((b, c), dtype=torch.float32, device=self.out_device, pin_memory=self.pin)
        for j, (i, r, col, hh, ww, height, width) in enumerate(wins):
            scores[j].copy_(self._sample("values", i, d, height, width)[r : r + hh, col : col + ww])
            coeffs[j].copy_(self.store["coeffs"][i * d * c : (i + 1) * d * c].view(d, c))
            means[j].copy_(self.store["means"][i * c : (i + 1) * c])
        assert self.decode_device is not None
        return decode_batch(scores, coeffs, means, self.decode_device)

    def _decode_on_host(self, i: int, height: int, width: int) -> np.ndarray:
        """Sample ``i``'s whole image decoded as the reader decodes it (``H5Split._read_into``)."""
        lay = self.layout
        d, c = lay.channels, lay.out_channels
        scores = self._sample("values", i, d, height, width).cpu()
        raw = scores.view(torch.int16).numpy().view(np.uint16) if lay.dtype == "bfloat16" else scores.numpy()
        widened = from_bfloat16_bits(raw) if lay.dtype == "bfloat16" else raw
        coeffs = self.store["coeffs"][i * d * c : (i + 1) * d * c].cpu().numpy().reshape(d, c)
        means = self.store["means"][i * c : (i + 1) * c].cpu().numpy()
        image = np.empty((height, width, c), dtype=np.float32)
        return pca_decode(widened, coeffs, means, out=image)

    def close(self) -> None:
        """Let go of the samples (a device store's memory, the node copy's mapping and lock)."""
        self.store = {}
        if self._copy is not None:
            self._copy.close()
            self._copy = None


class ResidentStreams:
    """A trial's resident streams of one bundle (the resident :class:`study.data.stream.Streams`): train and val
    held from the start, test read when the final phase asks for it."""

    def __init__(self, train: Split, val: Split, test: Split, settings: LoaderSettings, placement: str,
                 device: torch.device) -> None:
        self.settings, self.placement, self.device = settings, placement, device
        self.train = ResidentStream(train, settings, placement, device)
        self.val = ResidentStream(val, settings, placement, device)
        self._test = test

    def test(self) -> ResidentStream:
        """The test split, held until its stream is closed (the loop closes it after the one evaluation)."""
        return ResidentStream(self._test, self.settings, self.placement, self.device)

    def __enter__(self) -> ResidentStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in (self.train, self.val):
            with contextlib.suppress(Exception):
                s.close()
