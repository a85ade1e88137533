"""Scene roles -> each dataset's raw label ids, plus the annotation gaps real labels have.

The three benchmarks cut the same street differently (docs/reference.md §R2):
HyKo2 lumps every vehicle together and has a *grass* class, HSI-Drive labels
by *material* (painted vs unpainted metal, glass, concrete) and folds water
into ignore, HCV2 uses the 19 Cityscapes classes. Keeping that logic here, as
tables, lets one scene generator serve all of them.
"""

from __future__ import annotations

import numpy as np

from study.data.specs import DatasetSpec
from study.data.synthetic.scene import Scene
from study.errors import HsiStudyError

#: dataset -> role -> class name (None: the dataset's ignore class).
ROLE_CLASSES: dict[str, dict[str, str | None]] = {
    "hyko2": {
        "sky": "sky", "building": "building", "wall": "building", "fence": None, "tree": "vegetation",
        "grass": "grass", "soil": "grass", "road": "road", "marking": "lane_markers", "sidewalk": "sidewalk",
        "car": "vehicle", "truck": "vehicle", "bus": "vehicle", "train": "vehicle", "motorcycle": "vehicle",
        "bicycle": "vehicle", "person": "person", "rider": "person", "pole": "panels_signs_trafficlight",
        "sign": "panels_signs_trafficlight", "traffic_light": "panels_signs_trafficlight", "guardrail": None,
        "water": "road", "ego": None, "clutter": None,
    },
    "hsidrive": {
        "sky": "sky", "building": "concrete_stone_brick", "wall": "concrete_stone_brick",
        "fence": "unpainted_metal", "tree": "vegetation", "grass": "vegetation", "soil": None, "road": "road",
        "marking": "road_marks", "sidewalk": "concrete_stone_brick", "car": "painted_metal",
        "truck": "painted_metal", "bus": "painted_metal", "train": "painted_metal", "motorcycle": "painted_metal",
        "bicycle": "pedestrian_cyclist", "person": "pedestrian_cyclist", "rider": "pedestrian_cyclist",
        "pole": "unpainted_metal", "sign": "painted_metal", "traffic_light": "painted_metal",
        "guardrail": "unpainted_metal", "water": "water", "ego": None, "clutter": None,
    },
    "hcv2": {
        "sky": "sky", "building": "building", "wall": "wall", "fence": "fence", "tree": "vegetation",
        "grass": "terrain", "soil": "terrain", "road": "road", "marking": "road", "sidewalk": "sidewalk",
        "car": "car", "truck": "truck", "bus": "bus", "train": "train", "motorcycle": "motorcycle",
        "bicycle": "bicycle", "person": "person", "rider": "rider", "pole": "pole", "sign": "traffic_sign",
        "traffic_light": "traffic_light", "guardrail": "fence", "water": "road", "ego": None, "clutter": None,
    },
}

#: dataset -> (part, material kind) overrides: HSI-Drive labels glass and
#: unlabelled tyres by material; a metal pole there is unpainted, a painted one painted.
PART_CLASSES: dict[str, dict[str, str | None]] = {
    "hsidrive": {"glass": "glass_transparent_plastic", "wheel": None},
}
KIND_CLASSES: dict[str, dict[tuple[str, str], str | None]] = {
    "hsidrive": {("pole", "painted"): "painted_metal"},
}

#: HSI-Drive's raw id for water, which its loader folds into ignore (docs/reference.md §R2).
_HSIDRIVE_WATER_RAW = 8


def supported(spec: DatasetSpec) -> bool:
    return spec.name in ROLE_CLASSES


def _raw_id(spec: DatasetSpec, name: str | None) -> int:
    if name is None:
        return spec.raw_label_of(spec.ignore_index)
    if name == "water":
        return _HSIDRIVE_WATER_RAW
    if name not in spec.class_names:
        raise HsiStudyError(f"role table names class {name!r}, which {spec.name} does not have")
    return spec.raw_label_of(spec.class_names.index(name))


def instance_raw_labels(spec: DatasetSpec, scene: Scene) -> np.ndarray:
    """Raw label id (n_instances,) of every instance of ``scene`` for ``spec``."""
    if not supported(spec):
        raise HsiStudyError(
            f"the synthetic generator has no class table for dataset {spec.name!r}; add one to "
            f"study/data/synthetic/labels.py (known: {', '.join(sorted(ROLE_CLASSES))})"
        )
    roles, parts = ROLE_CLASSES[spec.name], PART_CLASSES.get(spec.name, {})
    kinds = KIND_CLASSES.get(spec.name, {})
    out = np.empty(len(scene.roles), np.int64)
    for i, (role, part, kind) in enumerate(zip(scene.roles, scene.parts, scene.kinds, strict=True)):
        if (role, kind) in kinds:
            name = kinds[(role, kind)]
        elif part in parts:
            name = parts[part]
        else:
            name = roles[role]
        out[i] = _raw_id(spec, name)
    return out


def label_map(spec: DatasetSpec, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Raw labels (H, W) uint8 of a scene, with the gaps of hand annotation.

    Real polygons leave thin unlabelled seams between neighbouring objects and
    whole regions nobody labelled; the sensor's band misregistration makes those
    seams the pixels with mixed spectra, so this is also where they matter.
    """
    lut = instance_raw_labels(spec, scene)
    raw = lut[scene.inst]
    ignore = spec.raw_label_of(spec.ignore_index)
    h, w = raw.shape
    seam = np.zeros(raw.shape, bool)
    seam[1:, :] |= raw[1:, :] != raw[:-1, :]
    seam[:, 1:] |= raw[:, 1:] != raw[:, :-1]
    # seams are left out in contiguous stretches (whole polygon edges), not as salt-and-pepper pixels
    cell = 4
    stretches = rng.random((h // cell + 1, w // cell + 1)) < rng.uniform(0.2, 0.7)
    drop = seam & stretches.repeat(cell, 0).repeat(cell, 1)[:h, :w]
    raw = np.where(drop | scene.unlabelled, ignore, raw)
    return raw.astype(np.uint8)
