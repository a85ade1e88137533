"""Dataset specs for the three HS3-Bench datasets: the one registry of their facts.

Band centres, class names, ignore ids and split names are the ones the
cross-domain paper's code uses (``docs/reference.md`` §R1–§R6). Every
other module (reader, generator, models, metrics, report) asks this registry
instead of hard-coding a number, so a new sensor is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: HyKo2-VIS band centres in nm (``wave_hyko2.csv``; irregular, 468–643 nm).
HYKO2_WAVELENGTHS: tuple[float, ...] = (
    468.20, 478.34, 490.83, 503.56, 514.11, 526.92, 541.80, 555.12,
    569.30, 578.54, 592.71, 600.25, 611.57, 622.49, 642.55,
)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the study needs to know about one dataset's layout.

    ``class_names`` has ``n_classes`` entries *including* the ignore slot: the
    networks always have ``n_classes`` outputs and the loss/metrics drop
    ``ignore_index`` (docs/reference.md §R2).
    """

    name: str
    title: str
    wavelengths: tuple[float, ...]
    class_names: tuple[str, ...]
    ignore_index: int
    image_size: tuple[int, int]
    batch_size: int
    split_counts: tuple[int, int, int]
    splits: tuple[str, ...] = ("train", "val", "test")
    #: raw on-disk label id -> training id, for datasets whose files keep the raw ids
    #: (HSI-Drive folds water into ignore; HCV2 maps 255 to 19). None: ids are used as stored.
    raw_label_map: tuple[tuple[int, int], ...] | None = None

    @property
    def n_bands(self) -> int:
        return len(self.wavelengths)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def valid_classes(self) -> tuple[int, ...]:
        """Class ids that count in the metrics (all but the ignore slot)."""
        return tuple(c for c in range(self.n_classes) if c != self.ignore_index)

    def remap_labels(self, raw: np.ndarray) -> np.ndarray:
        """Raw stored label ids (H, W) -> training ids (H, W) int64.

        Raw ids outside the map become -1 so that validation reports them as
        out of range instead of silently folding them into a class.
        """
        raw = np.asarray(raw)
        if self.raw_label_map is None:
            return raw.astype(np.int64, copy=False)
        lut = np.full(max(k for k, _ in self.raw_label_map) + 1, -1, dtype=np.int64)
        for k, v in self.raw_label_map:
            lut[k] = v
        out = np.full(raw.shape, -1, dtype=np.int64)
        inside = (raw >= 0) & (raw < lut.size)
        out[inside] = lut[raw[inside].astype(np.int64)]
        return out

    def raw_label_of(self, class_id: int) -> int:
        """The raw id a writer stores for training id ``class_id`` (inverse of the map)."""
        if self.raw_label_map is None:
            return class_id
        for k, v in self.raw_label_map:
            if v == class_id:
                return k
        raise ValueError(f"class id {class_id} has no raw id in {self.name}'s label map")

    def wavelength_array(self) -> np.ndarray:
        """Band centres as a float32 array of shape (C,)."""
        return np.asarray(self.wavelengths, dtype=np.float32)

    def file_name(self, split: str) -> str:
        """HS3-Bench file name of one split, e.g. ``hyko2_train.h5``."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for {self.name}; valid: {', '.join(self.splits)}")
        return f"{self.name}_{split}.h5"


SPECS: dict[str, DatasetSpec] = {
    "hyko2": DatasetSpec(
        name="hyko2",
        title="HyKo2-VIS (semantic)",
        wavelengths=HYKO2_WAVELENGTHS,
        class_names=(
            "undefined", "road", "sidewalk", "lane_markers", "grass", "vegetation",
            "panels_signs_trafficlight", "building", "vehicle", "person", "sky",
        ),
        ignore_index=0,
        image_size=(254, 510),
        batch_size=16,
        split_counts=(81, 32, 49),
    ),
    "hsidrive": DatasetSpec(
        name="hsidrive",
        title="HSI-Drive v2.0",
        wavelengths=tuple(round(535.0 + 440.0 / 24.0 * k, 3) for k in range(25)),  # 535 -> 975 nm
        class_names=(
            "road", "road_marks", "vegetation", "painted_metal", "sky",
            "concrete_stone_brick", "pedestrian_cyclist", "unpainted_metal",
            "glass_transparent_plastic", "undefined",
        ),
        ignore_index=9,
        image_size=(216, 409),
        batch_size=32,
        split_counts=(451, 150, 151),
        # raw PNG ids: 0 unlabelled, 1 road, 2 road marks, 3 vegetation, 4 painted metal, 5 sky,
        # 6 concrete, 7 pedestrian, 8 water (dropped), 9 unpainted metal, 10 glass
        raw_label_map=((0, 9), (1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 6), (8, 9), (9, 7), (10, 8)),
    ),
    "hcv2": DatasetSpec(
        name="hcv2",
        title="Hyperspectral City V2 (half resolution)",
        wavelengths=tuple(449.0 + 4.0 * k for k in range(128)),
        class_names=(
            "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light",
            "traffic_sign", "vegetation", "terrain", "sky", "person", "rider", "car",
            "truck", "bus", "train", "motorcycle", "bicycle", "undefined",
        ),
        ignore_index=19,
        image_size=(711, 944),
        batch_size=4,
        split_counts=(949, 105, 276),
        raw_label_map=tuple((k, k) for k in range(19)) + ((255, 19),),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """Look a dataset up by name; unknown names raise a ValueError listing the valid ones."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(SPECS))}") from None
