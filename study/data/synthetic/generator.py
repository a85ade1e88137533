"""The embedded default data set: synthetic HS3-like driving scenes written in the HS3-Bench layout.

Real HS3-Bench cubes cannot be downloaded here (design.md §4), so every study
can run on this generator instead. It is honest about what it is (root
attribute ``synthetic=True``) and realistic where it matters for the transfer
question: per-instance reflectance drawn from real spectral libraries
(:mod:`study.data.synthetic.materials`), a driving-scene layout with the dataset's own
classes (:mod:`study.data.synthetic.scene`, :mod:`study.data.synthetic.labels`), sun/sky
illumination with blue shadows (:mod:`study.data.synthetic.render`) and each dataset's
camera (:mod:`study.data.synthetic.sensor`) at its real band centres.

Determinism: every image draws from ``numpy.random.default_rng((seed, split,
index))``, so the same config gives byte-identical arrays in any process and
any order, and a sub-range of images does not depend on the others.

Files (docs/reference.md §R4): ``<dataset>_<split>.h5``, one top-level group per
sample named like the real stems, each with ``image`` (H, W, C) float32 and
``labels`` (H, W) uint8 holding the *raw* label ids; root attributes
``wavelengths`` (float32, nm), ``generator_version``, ``synthetic``, ``seed``.

Stored values are raw sensor-like, never normalised (docs/reference.md §R6), and
differ per dataset like the real ones (details in :mod:`study.data.synthetic.sensor`):
HyKo2 DN/1023 in [0, 1] (sky and glints clip at 1); HSI-Drive white-referenced
reflectance in [0, 4] (median ≈ 0.1); HCV2 radiance in µW cm⁻² sr⁻¹ nm⁻¹
(median ≈ 2, sky up to ≈ 90), rebuilt from 15 principal components.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from study.data.specs import DatasetSpec
from study.data.synthetic import labels as lab
from study.data.synthetic import render
from study.data.synthetic import sensor as sen
from study.data.synthetic.scene import layout
from study.errors import ConfigError

#: Bump whenever the generated arrays change: it is part of the cache key.
GENERATOR_VERSION = "1.0.0"

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_COMPLETE = "COMPLETE.json"


@dataclass(frozen=True)
class GeneratorConfig:
    """Size and seed of a synthetic data set (images per split, pixels per image)."""

    height: int = 64
    width: int = 128
    n_train: int = 40
    n_val: int = 12
    n_test: int = 16
    seed: int = 0

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def validate(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"synthetic images must be at least 8×8 pixels, got {self.height}×{self.width}")
        for split in _SPLIT_CODE:
            if self.count(split) < 1:
                raise ConfigError(f"the synthetic {split} split needs at least one image, got {self.count(split)}")


def sample_name(spec: DatasetSpec, split: str, index: int) -> str:
    """A real-looking sample stem; zero-padded so lexicographic order (h5py's) equals index order."""
    code = _SPLIT_CODE.get(split, 3)
    if spec.name == "hyko2":
        return f"set-_{3 * index + code + 1:05d}_spec_annotated"
    if spec.name == "hsidrive":
        return f"nf{1000 * code + 1 + index // 100:04d}_{index % 100 + 1:03d}"
    if spec.name == "hcv2":
        t = 10 * 3600 + 17 * index
        return f"2021041{code}_{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}_{index % 100:02d}"
    return f"{spec.name}_{split}_{index:06d}"


def render_image(spec: DatasetSpec, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: image (H, W, C) float32 in the dataset's units and raw labels (H, W) uint8."""
    cam = sen.make_camera(spec)
    scene = layout(rng, height, width)
    materials = render.instance_materials(scene, rng)
    ill = render.draw_illumination(rng)
    signal = render.band_signal(scene, materials, ill, cam.response, rng)
    image = sen.capture(spec, signal, render.white_signal(cam.response), rng)
    return image, lab.label_map(spec, scene, rng)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE.get(split, 3), index])


def _write_split(spec: DatasetSpec, path: Path, split: str, config: GeneratorConfig, progress: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["wavelengths"] = spec.wavelength_array()
            f.attrs["generator_version"] = GENERATOR_VERSION
            f.attrs["synthetic"] = True
            f.attrs["seed"] = config.seed
            for i in range(config.count(split)):
                image, labels = render_image(spec, config.height, config.width, image_rng(config.seed, split, i))
                grp = f.create_group(sample_name(spec, split, i))
                grp.create_dataset("image", data=image)
                grp.create_dataset("labels", data=labels)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if progress:
        print(f"[hsistudy] wrote {path} ({config.count(split)} images)", file=sys.stderr)


def generate_dataset(spec: DatasetSpec, out_dir: Path, config: GeneratorConfig, progress: bool = False) -> Path:
    """Write ``out_dir/<spec.file_name(split)>`` for train, val and test (each atomically); return ``out_dir``."""
    config.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for split in ("train", "val", "test"):
        _write_split(spec, out_dir / spec.file_name(split), split, config, progress)
    if progress:
        print(f"[hsistudy] synthetic {spec.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out_dir


def config_hash(spec: DatasetSpec, config: GeneratorConfig) -> str:
    """Cache key: the config, the generator version and the spec facts the output depends on."""
    key = {"config": asdict(config), "version": GENERATOR_VERSION, "spec": spec.name,
           "wavelengths": list(spec.wavelengths), "classes": list(spec.class_names)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    env = os.environ.get("HSISTUDY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hsistudy"


def ensure_default_dataset(
    spec: DatasetSpec, cache_dir: Path | None = None, config: GeneratorConfig | None = None, progress: bool = False
) -> Path:
    """Directory holding the synthetic data set for ``spec``, generating it on first use.

    Generation happens in a private temporary directory that is renamed into
    place after its completion marker is written, so concurrent callers (Ray
    workers) never see half-written files; the loser of a race discards its copy.
    """
    config = config or GeneratorConfig()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / "synthetic" / f"{spec.name}-{config_hash(spec, config)}"
    if _complete(spec, final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if (final / _COMPLETE).is_file():  # finished once, damaged since (a truncated copy, a full disk)
            print(f"[hsistudy] cache entry {final} is damaged (a file is missing or truncated); generating it again",
                  file=sys.stderr)
        generate_dataset(spec, tmp, config, progress)
        sizes = {spec.file_name(s): (tmp / spec.file_name(s)).stat().st_size for s in _SPLIT_CODE}
        (tmp / _COMPLETE).write_text(json.dumps({"config": asdict(config), "version": GENERATOR_VERSION,
                                                 "sizes": sizes}))
        if _complete(spec, final):
            return final
        if final.exists():  # an incomplete leftover of a crashed run, or a damaged entry
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _complete(spec, final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _complete(spec: DatasetSpec, folder: Path) -> bool:
    """A finished, intact cache entry: its marker, and every split file at the size the marker recorded.

    Why the sizes: a truncated file (a full disk, a partial copy of the cache) must be generated
    again, not reported to the user as a corrupt data file to "copy again". Entries written before
    sizes were recorded are checked by opening each file instead.
    """
    marker, files = folder / _COMPLETE, [folder / spec.file_name(s) for s in _SPLIT_CODE]
    if not marker.is_file() or not all(f.is_file() for f in files):
        return False
    try:
        sizes = json.loads(marker.read_text()).get("sizes")
    except (OSError, ValueError, AttributeError):
        return False
    if isinstance(sizes, dict):
        return all(sizes.get(f.name) == f.stat().st_size for f in files)
    return all(_opens(f) for f in files)


def _opens(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as fh:
            return len(fh) > 0
    except (OSError, RuntimeError, KeyError):
        return False
