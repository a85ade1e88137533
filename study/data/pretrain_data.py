"""Real remote-sensing spectra for HyperSL's masked spectral modelling, at the target sensors' bands.

Two sources ship in registry packages and are read by file path with numpy
(``docs/reference.md`` §R22–§R25), never imported:

- **Indian Pines** (tensorly): the one real airborne cube available, AVIRIS
  at-sensor DN, 145 x 145 x 200; all pixels, unlabelled;
- **earthlib's pervious spectra** (soil, sand/gravel/dirt, bark/litter/wood/npv,
  char and 2,000 PROSAIL canopies): reflectance. The impervious (urban)
  spectra are kept out: they are the proximal evaluation set (§R25).

Why resample to the target sensors: the wavelength positional encoding must
see the band centres HyKo2, HSI-Drive and HCV2 use (450–1000 nm), not AVIRIS'.
Each source is put on the 1 nm grid of :mod:`study.data.spectra`, integrated
over Gaussian spectral response functions centred on the sensor's bands, then
min–max scaled per band over the whole source ("scene"), as HyperSL's own
pretraining scales each scene (docs/reference.md §R12). Training batches take a
random band subset of one sensor layout (a contiguous window with a few bands
dropped), so band counts and spacings vary as across real sensors.

The spatially disjoint Indian Pines split used to evaluate the backbone
(``benchmarks/indian_pines_fc.py``) lives here too, because the strict variant
of that evaluation must keep the split's test blocks out of pretraining
(``ip_holdout``, docs/reference.md §R25).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from study.data.specs import get_spec
from study.data.spectra import GRID_NM, bundle, earthlib_library, package_dir, resample, spectra_data_file
from study.errors import HsiStudyError

#: Indian Pines band centres in nm, copied from ``tensorly/datasets/data_imports.py``
#: (``load_indian_pines``, tensorly 0.10.0); a test asserts the copy still matches. Not monotonic
#: at 0-based indices 30, 93, 171 (overlaps between AVIRIS spectrometers).
INDIAN_PINES_WAVELENGTHS: tuple[float, ...] = (
    400.02, 409.82, 419.62, 429.43, 439.25, 449.07, 458.9, 468.73, 478.57, 488.41, 498.26, 508.12, 517.98,
    527.85, 537.72, 547.6, 557.49, 567.38, 577.28, 587.18, 597.09, 607.01, 616.93, 626.85, 636.78, 646.72,
    656.67, 666.61, 676.57, 686.53, 696.5, 686.91, 696.55, 706.19, 715.83, 725.47, 735.11, 744.74, 754.38,
    764.01, 773.64, 783.27, 792.91, 802.53, 812.21, 821.79, 831.41, 841.04, 850.66, 860.28, 869.91, 879.53,
    889.14, 898.76, 908.38, 917.99, 927.61, 937.22, 946.83, 956.45, 966.06, 975.66, 985.27, 994.88, 1004.48,
    1014.09, 1023.69, 1033.29, 1042.89, 1052.49, 1062.09, 1071.69, 1081.29, 1090.88, 1100.48, 1110.07, 1119.66,
    1129.25, 1138.84, 1148.43, 1158.02, 1167.61, 1177.19, 1186.77, 1196.36, 1205.94, 1215.52, 1225.1, 1234.68,
    1244.26, 1253.83, 1263.41, 1272.98, 1282.55, 1273.0, 1282.96, 1292.93, 1302.89, 1312.85, 1322.81, 1332.77,
    1342.73, 1352.68, 1422.34, 1432.28, 1442.23, 1452.17, 1462.11, 1472.05, 1481.99, 1491.92, 1501.86, 1511.79,
    1521.73, 1531.66, 1541.59, 1551.52, 1561.44, 1571.37, 1581.3, 1591.22, 1601.14, 1611.06, 1620.98, 1630.9,
    1640.81, 1650.73, 1660.64, 1670.56, 1680.47, 1690.38, 1700.28, 1710.19, 1720.1, 1730.0, 1739.9, 1749.81,
    1759.71, 1769.6, 1779.5, 1789.4, 1799.29, 1809.19, 1819.08, 1953.26, 1963.25, 1973.24, 1983.23, 1993.22,
    2003.2, 2013.18, 2023.16, 2033.13, 2043.1, 2053.07, 2063.04, 2073.0, 2082.97, 2092.92, 2102.88, 2112.83,
    2122.78, 2132.73, 2142.68, 2152.62, 2162.56, 2172.5, 2182.43, 2192.37, 2202.3, 2260.22, 2270.15, 2232.07,
    2241.99, 2251.9, 2261.82, 2271.73, 2281.64, 2291.54, 2301.45, 2311.35, 2321.25, 2331.14, 2341.03, 2350.92,
    2360.81, 2370.7, 2380.58, 2390.46, 2400.33, 2410.21, 2420.08, 2429.95, 2439.81, 2449.68, 2459.54, 2469.4,
    2479.25, 2489.11, 2498.96,
)

#: Gaussian SRF widths (FWHM, nm) per target sensor, the values docs/reference.md §R25's baselines used.
SENSOR_FWHM: dict[str, float] = {"hyko2": 12.0, "hsidrive": 15.0, "hcv2": 8.0}
SENSORS: tuple[str, ...] = ("hyko2", "hsidrive", "hcv2")
#: earthlib LEVEL_2 groups that make up the pervious (non-urban) spectra.
PERVIOUS_LEVEL2: tuple[str, ...] = ("bare", "vegetation", "npv", "burned")
#: earthlib LEVEL_3 classes that are simulated rather than measured (all canopies are PROSAIL, docs/reference.md §R23).
SIMULATED_LEVEL3: tuple[str, ...] = ("canopy",)


def tensorly_wavelengths() -> np.ndarray:
    """The 200 Indian Pines centres parsed from tensorly's source (only to check our copy)."""
    path = package_dir("tensorly") / "datasets" / "data_imports.py"
    src = path.read_text()
    block = src[src.index("def load_indian_pines"):]
    found = re.search(r"wavelengths = \[(.*?)\]", block, re.S)
    if found is None:
        raise HsiStudyError(f"{path}: no wavelengths list in load_indian_pines")
    return np.array([float(v) for v in found.group(1).split(",") if v.strip()])


@lru_cache(maxsize=1)
def indian_pines() -> tuple[np.ndarray, np.ndarray]:
    """Indian Pines cube (145, 145, 200) uint16 (at-sensor DN) and labels (145, 145), read-only."""
    if (b := bundle()) is not None:  # the package's arrays, bundled unchanged
        cube, labels = b["ip_cube"].copy(), b["ip_labels"].copy()
    else:
        cube = np.load(spectra_data_file("tensorly", "datasets", "data", "Indian_pines_corrected.npy"))
        labels = np.load(spectra_data_file("tensorly", "datasets", "data", "Indian_pines_gt.npy"))
    if cube.shape[-1] != len(INDIAN_PINES_WAVELENGTHS) or cube.shape[:2] != labels.shape:
        raise HsiStudyError(f"Indian Pines files have unexpected shapes {cube.shape}, {labels.shape}")
    cube.setflags(write=False)
    labels.setflags(write=False)
    return cube, labels


def to_grid(wavelengths: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """Spectra (N, L) at possibly unsorted centres -> (N, 601) on GRID_NM (linear; sorted first)."""
    order = np.argsort(wavelengths, kind="stable")
    return resample(np.asarray(wavelengths, dtype=np.float64)[order], np.asarray(spectra)[:, order])


def srf_matrix(centres: np.ndarray, fwhm: float, grid: np.ndarray = GRID_NM) -> np.ndarray:
    """(G, C) Gaussian spectral response weights, each column summing to 1 over the grid."""
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    w = np.exp(-0.5 * ((grid[:, None] - np.asarray(centres, dtype=np.float64)[None, :]) / sigma) ** 2)
    return w / w.sum(axis=0, keepdims=True)


def minmax_per_band(x: np.ndarray) -> np.ndarray:
    """Per-band min–max scaling over all spectra of one scene to [0, 1] (sklearn ``minmax_scale``, axis 0)."""
    lo, hi = x.min(axis=0, keepdims=True), x.max(axis=0, keepdims=True)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def sensor_fwhm(name: str) -> float:
    """FWHM for a sensor: the table value, else the median band spacing."""
    if name in SENSOR_FWHM:
        return SENSOR_FWHM[name]
    return float(np.median(np.diff(get_spec(name).wavelength_array())))


@dataclass
class SpectraPool:
    """One source resampled to one sensor: spectra (N, C) float32 in [0, 1] and band centres (C,) nm."""

    source: str
    sensor: str
    spectra: np.ndarray
    wavelengths: np.ndarray


def pretraining_sources(include_simulated: bool = True, ip_columns: tuple[int, int] = (0, 145),
                        ip_holdout: str = "") -> dict[str, np.ndarray]:
    """Source name -> spectra (N, 601) on GRID_NM, NaN/non-finite rows removed.

    ``ip_columns`` keeps only Indian Pines columns [a, b) and ``ip_holdout``
    (:func:`indian_pines_holdout`) drops whole blocks of the checkerboard split:
    the strict variant of an Indian Pines evaluation keeps its test blocks out
    of pretraining (docs/reference.md §R25).
    """
    cube, _ = indian_pines()
    a, b = ip_columns
    if not 0 <= a < b <= cube.shape[1]:
        raise HsiStudyError(f"ip_columns must satisfy 0 <= a < b <= {cube.shape[1]}, got {ip_columns}")
    keep_px = ~indian_pines_holdout(ip_holdout)
    keep_px[:, :a] = False
    keep_px[:, b:] = False
    ip = cube[keep_px].astype(np.float64)
    out = {"indian_pines": to_grid(np.asarray(INDIAN_PINES_WAVELENGTHS), ip)}
    spectra, _, level2, level3 = earthlib_library()
    keep = np.isin(np.array(level2), PERVIOUS_LEVEL2)
    if not include_simulated:
        keep &= ~np.isin(np.array(level3), SIMULATED_LEVEL3)
    out["earthlib"] = spectra[keep]
    return {k: v[np.all(np.isfinite(v), axis=1)] for k, v in out.items()}


def earthlib_counts(include_simulated: bool = True) -> dict[str, int]:
    """LEVEL_3 class -> count of the earthlib spectra used (for the pretraining card)."""
    _, _, level2, level3 = earthlib_library()
    counts: dict[str, int] = {}
    for l2, l3 in zip(level2, level3, strict=True):
        if l2 in PERVIOUS_LEVEL2 and (include_simulated or l3 not in SIMULATED_LEVEL3):
            counts[l3] = counts.get(l3, 0) + 1
    return dict(sorted(counts.items()))


def build_pools(sensors: tuple[str, ...] = SENSORS, include_simulated: bool = True,
                ip_columns: tuple[int, int] = (0, 145), ip_holdout: str = "") -> list[SpectraPool]:
    """Every (source, sensor) pool: SRF-resampled, then min–max per band over the source."""
    pools = []
    for source, grid_spectra in pretraining_sources(include_simulated, ip_columns, ip_holdout).items():
        for sensor in sensors:
            wl = get_spec(sensor).wavelength_array()
            pools.append(SpectraPool(source, sensor, to_sensor(grid_spectra, sensor), wl))
    return pools


def to_sensor(grid_spectra: np.ndarray, sensor: str) -> np.ndarray:
    """Spectra on GRID_NM (N, 601) -> the sensor's bands (Gaussian SRFs), min–max per band over N; float32.

    The same transform feeds pretraining and the Indian Pines evaluation's
    feature export, so the backbone sees identically scaled inputs in both.
    """
    wl = get_spec(sensor).wavelength_array()
    return minmax_per_band(grid_spectra @ srf_matrix(wl, sensor_fwhm(sensor))).astype(np.float32)


# ---------------------------------------------------------------- spatially disjoint Indian Pines split
#: Checkerboard split of the 145 x 145 scene (docs/reference.md §R25): square cells of ``IP_CELL`` px, even cells
#: (row + column cell index even) train, odd cells test; ``IP_GUARD`` px at every cell border are left
#: out of both, so a training pixel and a test pixel are always >= 2 * IP_GUARD + 1 px apart.
IP_CELL = 20
IP_GUARD = 2
#: Classes kept by the evaluation: >= IP_MIN_PIXELS labelled pixels on *both* sides of the split.
IP_MIN_PIXELS = 20


def indian_pines_cells(cell: int = IP_CELL) -> tuple[np.ndarray, np.ndarray]:
    """Cell parity (0 = training cell, 1 = test cell) and validation quadrant flag of every pixel, (145, 145).

    The validation quadrants are the anti-diagonal quarters (top-right and
    bottom-left) of each cell: inside the training cells they hold the
    validation pixels, so every training cell gives pixels to both ``fit`` and ``val``.
    """
    if cell < 4:
        raise HsiStudyError(f"checkerboard cell must be >= 4 px, got {cell}")
    r, c = np.indices(indian_pines()[1].shape)
    half = cell // 2
    return (r // cell + c // cell) % 2, (r % cell < half) != (c % cell < half)


def indian_pines_split(cell: int = IP_CELL, guard: int = IP_GUARD) -> dict[str, np.ndarray]:
    """Boolean (145, 145) masks of the labelled pixels per role (guard bands removed).

    ``train``/``test``: even/odd checkerboard cells, without the ``guard`` px at
    every cell border. ``fit``/``val``: the training pixels again, split into the
    diagonal / anti-diagonal quarters of each training cell with a further 1 px
    guard on each side of the quarter borders, for choosing settings without
    looking at the test cells.
    """
    if not 0 <= 2 * guard < cell // 2:
        raise HsiStudyError(f"guard must satisfy 0 <= 2 * guard < cell / 2, got guard {guard}, cell {cell}")
    _, labels = indian_pines()
    parity, val_quarter = indian_pines_cells(cell)
    r, c = np.indices(labels.shape)
    rr, cc, half = r % cell, c % cell, cell // 2
    inner = (rr >= guard) & (rr < cell - guard) & (cc >= guard) & (cc < cell - guard)
    lab = (labels > 0) & inner
    train = lab & (parity == 0)
    quarter_inner = (np.abs(2 * rr + 1 - 2 * half) > 2) & (np.abs(2 * cc + 1 - 2 * half) > 2)
    return {"train": train, "test": lab & (parity == 1), "fit": train & quarter_inner & ~val_quarter,
            "val": train & quarter_inner & val_quarter}


def indian_pines_holdout(spec: str) -> np.ndarray:
    """Boolean (145, 145) mask of the pixels a pretraining must not see.

    ``""``: none. ``"checker<cell>:test"``: every pixel (labelled or not, guard
    bands included) of the checkerboard's test cells. ``"checker<cell>:test+val"``:
    also the validation quarters of the training cells.
    """
    shape = indian_pines()[1].shape
    if not spec:
        return np.zeros(shape, dtype=bool)
    found = re.fullmatch(r"checker(\d+):(test|test\+val)", spec)
    if found is None:
        raise HsiStudyError(f"ip_holdout must be '', 'checker<cell>:test' or 'checker<cell>:test+val', got {spec!r}")
    parity, val_quarter = indian_pines_cells(int(found.group(1)))
    out = parity == 1
    if found.group(2) == "test+val":
        out |= val_quarter
    return out


def random_band_subset(n_bands: int, rng: np.random.Generator, min_bands: int = 8, max_drop: float = 0.2) -> np.ndarray:
    """Sorted band indices: a random contiguous window of >= half the bands, up to ``max_drop`` of it dropped."""
    lo = min(n_bands, max(min_bands, (n_bands + 1) // 2))
    width = int(rng.integers(lo, n_bands + 1))
    start = int(rng.integers(0, n_bands - width + 1))
    idx = np.arange(start, start + width)
    n_drop = int(rng.integers(0, min(int(max_drop * width), max(0, width - min_bands)) + 1))
    if n_drop:
        idx = np.sort(rng.choice(idx, size=width - n_drop, replace=False))
    return idx


def sample_batch(pool: SpectraPool, batch: int, rng: np.random.Generator, min_bands: int = 8,
                 band_subsets: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` random spectra on a random band subset (or all bands): (batch, L) float32 and centres (L,) nm."""
    rows = rng.integers(0, pool.spectra.shape[0], size=batch)
    if not band_subsets:
        return pool.spectra[rows], pool.wavelengths
    cols = random_band_subset(pool.spectra.shape[1], rng, min_bands)
    return pool.spectra[np.ix_(rows, cols)], pool.wavelengths[cols]
