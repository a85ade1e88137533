"""Real spectra from registry packages, read by file path with numpy only.

The synthetic generator must draw its materials from *measured* spectra
(``docs/reference.md`` §R22–§R24, §R26–§R29), not invented curves, so that band
ratios, the red edge and the absorption features are realistic.

Where the data comes from: earthlib's library, pvlib's ASTM G173 table and
tensorly's Indian Pines cube ship inside hsistudy as ``spectra_bundle.npz``
(made from those registry packages by ``scripts/make_spectra_bundle.py``, same
values; licences and citations in ``SPECTRA_NOTICE.md``), so an installed wheel
needs no other file. Without the bundle (or with ``HSISTUDY_SPECTRA=packages``)
they are read from the installed packages by file path, never imported:
importing earthlib alone would pull pandas/spectral/loguru. prosail's PROSPECT-D
table is always read from the prosail package (a dependency): prosail states no
licence, so it is not redistributed here.

Everything is put onto one 1 nm grid, :data:`GRID_NM` = 400…1000 nm, which
covers all three HS3-Bench sensors; loaded arrays are cached in-process.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from study.errors import HsiStudyError

#: The common wavelength grid of every spectrum here: 400…1000 nm, 1 nm step (601 samples).
GRID_NM: np.ndarray = np.arange(400.0, 1001.0, 1.0)
GRID_NM.setflags(write=False)

_INSTALL_FIX = "pip install --no-deps -r requirements-data.txt"
#: The bundled spectra (package data); absent in a checkout that has not built it.
BUNDLE_PATH = Path(__file__).resolve().parent / "spectra_bundle.npz"
#: earthlib bands above this are never used (the grid stops at 1000 nm), so the bundle leaves them out.
EARTHLIB_MAX_NM = float(GRID_NM[-1]) + 10.0

#: Pool name -> earthlib LEVEL_3 classes it is made of (docs/reference.md §R23 counts).
POOL_GROUPS: dict[str, tuple[str, ...]] = {
    "road": ("road", "asphalt", "parking_lot", "driveway"),
    "asphalt": ("asphalt",),
    "sidewalk": ("sidewalk", "concrete_tile"),
    "paint": ("paint",),
    "metal": ("metal",),
    "glass": ("glass",),
    "soil": ("soil",),
    "sand": ("sand", "gravel", "dirt"),
    "bark": ("bark", "wood"),
    "npv": ("litter", "npv"),
    "roof": ("comp_shingle", "tile", "wood_shingle"),
    "tile": ("tile",),
    "canopy": ("canopy",),
}


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise HsiStudyError(
            f"the data package {name!r} is not installed; the synthetic data and pretraining read "
            f"real spectra from it. Fix: {_INSTALL_FIX}"
        )
    return Path(spec.origin).parent


@lru_cache(maxsize=1)
def bundle() -> dict[str, np.ndarray] | None:
    """The bundled arrays (read once), or None without a bundle or with ``HSISTUDY_SPECTRA=packages``."""
    if os.environ.get("HSISTUDY_SPECTRA", "").strip() == "packages" or not BUNDLE_PATH.is_file():
        return None
    with np.load(BUNDLE_PATH, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for arr in arrays.values():
        arr.setflags(write=False)
    return arrays


def source_hashes() -> dict[str, str]:
    """sha256[:16] of the registry files the spectra come from (``package/relative/path`` -> hash), for cards.

    From the bundle's record when bundled (the hashes of the files it was made from), else hashed now.
    """
    if (b := bundle()) is not None:
        return dict(json.loads(str(b["info_json"]))["files_sha256_16"])
    import hashlib

    files = {"tensorly": ("datasets", "data", "Indian_pines_corrected.npy"), "earthlib": ("data", "spectra.sli")}
    return {"/".join((pkg, *parts)): hashlib.sha256(spectra_data_file(pkg, *parts).read_bytes()).hexdigest()[:16]
            for pkg, parts in files.items()}


def spectra_data_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise HsiStudyError(f"{path} is missing from the installed {package!r} package. Fix: {_INSTALL_FIX}")
    return path


def resample(wavelengths: np.ndarray, values: np.ndarray, grid: np.ndarray = GRID_NM) -> np.ndarray:
    """Linear interpolation of spectra (..., L) sampled at ``wavelengths`` onto ``grid``.

    Vectorised over leading axes (one index computation for all spectra) because
    earthlib has 7,261 rows and a Python loop over ``np.interp`` would dominate
    start-up time.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    idx = np.clip(np.searchsorted(wl, grid, side="right") - 1, 0, wl.size - 2)
    frac = np.clip((grid - wl[idx]) / (wl[idx + 1] - wl[idx]), 0.0, 1.0)
    v = np.asarray(values, dtype=np.float64)
    return v[..., idx] * (1.0 - frac) + v[..., idx + 1] * frac


@lru_cache(maxsize=1)
def earthlib_library() -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """All earthlib spectra on :data:`GRID_NM`.

    Returns ``(spectra (7261, 601) float64, native wavelengths (180,) nm, LEVEL_2, LEVEL_3)``;
    row i of the metadata belongs to row i of the spectra.
    """
    if (b := bundle()) is not None:  # the same numbers, VNIR bands only
        wl = b["earthlib_wavelengths_nm"]
        spectra = np.clip(resample(wl[wl <= EARTHLIB_MAX_NM], b["earthlib_spectra"]), 0.0, 1.1)
        return spectra, wl, tuple(b["earthlib_level2"].tolist()), tuple(b["earthlib_level3"].tolist())
    sli = spectra_data_file("earthlib", "data", "spectra.sli")
    hdr = spectra_data_file("earthlib", "data", "spectra.sli.hdr").read_text()
    meta = spectra_data_file("earthlib", "data", "spectra.csv")
    match = re.search(r"wavelength = \{(.*?)\}", hdr, re.S)
    lines = re.search(r"lines\s*=\s*(\d+)", hdr)
    samples = re.search(r"samples\s*=\s*(\d+)", hdr)
    if match is None or lines is None or samples is None:
        raise HsiStudyError(f"{sli.with_suffix('.sli.hdr')}: no wavelength/lines/samples field. Fix: {_INSTALL_FIX}")
    wl = 1000.0 * np.array([float(v) for v in match.group(1).split(",") if v.strip()])  # µm -> nm
    raw = np.fromfile(sli, dtype="<f4").reshape(int(lines.group(1)), int(samples.group(1)))
    with meta.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) != raw.shape[0]:
        raise HsiStudyError(f"{meta}: {len(rows)} rows for {raw.shape[0]} spectra. Fix: {_INSTALL_FIX}")
    keep = wl <= EARTHLIB_MAX_NM  # only the VNIR part is needed; the grid stops at 1000 nm
    spectra = np.clip(resample(wl[keep], raw[:, keep]), 0.0, 1.1)
    return (spectra, wl, tuple(r["LEVEL_2"] for r in rows), tuple(r["LEVEL_3"] for r in rows))


@cache
def material_pool(name: str) -> np.ndarray:
    """Reflectance spectra (n, 601) of one material pool (see :data:`POOL_GROUPS`), read-only."""
    if name not in POOL_GROUPS:
        raise ValueError(f"unknown material pool {name!r}; valid pools: {', '.join(sorted(POOL_GROUPS))}")
    spectra, _, _, level3 = earthlib_library()
    rows = np.flatnonzero(np.isin(np.array(level3), POOL_GROUPS[name]))
    pool = spectra[rows]
    pool.setflags(write=False)
    return pool


@lru_cache(maxsize=1)
def astm_g173() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ASTM G173-03 (extraterrestrial, global tilt, direct+circumsolar) on :data:`GRID_NM`, W m⁻² nm⁻¹.

    The O₂-A (760 nm) and water (940 nm) bands in these curves are what makes
    radiance-domain cubes realistic (docs/reference.md §R27).
    """
    b = bundle()
    table = b["astm_g173"] if b is not None else np.genfromtxt(
        spectra_data_file("pvlib", "data", "ASTMG173.csv"), delimiter=",", skip_header=2)
    ext, glob, direct = (resample(table[:, 0], table[:, k]) for k in (1, 2, 3))
    for arr in (ext, glob, direct):
        arr.setflags(write=False)
    return ext, glob, direct


@lru_cache(maxsize=1)
def prospect_d_coefficients() -> np.ndarray:
    """PROSPECT-D table (601, 8) on :data:`GRID_NM`.

    Columns: wavelength, refractive index n, specific absorption of Cab, Car,
    Anth, Cbrown, Cw, Cm (the column order of prosail's ``prospect_d_spectra.txt``).
    """
    path = spectra_data_file("prosail", "prospect_d_spectra.txt")
    table = np.loadtxt(path, comments="#")
    if table.shape[1] != 8:
        raise HsiStudyError(f"{path}: expected 8 columns, found {table.shape[1]}. Fix: {_INSTALL_FIX}")
    rows = (table[:, 0] >= GRID_NM[0]) & (table[:, 0] <= GRID_NM[-1])
    out = table[rows]
    out.setflags(write=False)
    return out


def exp1(x: np.ndarray) -> np.ndarray:
    """Exponential integral E1(x) for x > 0 (scipy-free).

    Abramowitz & Stegun 5.1.53 (x ≤ 1, |err| < 2e-7) and 5.1.56 (x > 1,
    relative err < 5e-5): accurate enough for PROSPECT's plate transmission,
    where E1 enters multiplied by x² and x e^-x terms.
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.minimum(x, 1.0)
    a = (-0.57721566, 0.99999193, -0.24991055, 0.05519968, -0.00976004, 0.00107857)
    poly = a[5]
    for c in a[4::-1]:
        poly = poly * small + c
    e_small = poly - np.log(np.maximum(small, 1e-300))
    big = np.maximum(x, 1.0)
    ratio = (big**2 + 2.334733 * big + 0.250621) / (big**2 + 3.330657 * big + 1.681534)
    e_big = ratio * np.exp(-big) / big
    return np.where(x <= 1.0, e_small, e_big)


def _tav(alpha_deg: float, nr: np.ndarray) -> np.ndarray:
    """Average transmissivity of a dielectric interface for isotropic light within ``alpha``
    (Stern 1964; Allen 1973) — the standard PROSPECT ``calctav``."""
    n2 = nr * nr
    npx, nm = n2 + 1.0, n2 - 1.0
    a = (nr + 1.0) ** 2 / 2.0
    k = -((n2 - 1.0) ** 2) / 4.0
    sa = np.sin(np.deg2rad(alpha_deg))
    b1 = np.sqrt((sa * sa - npx / 2.0) ** 2 + k) if alpha_deg != 90.0 else 0.0
    b = b1 - (sa * sa - npx / 2.0)
    ts = (k**2 / (6 * b**3) + k / b - b / 2) - (k**2 / (6 * a**3) + k / a - a / 2)
    tp1 = -2 * n2 * (b - a) / npx**2
    tp2 = -2 * n2 * npx * np.log(b / a) / nm**2
    tp3 = n2 * (1 / b - 1 / a) / 2
    tp4 = 16 * n2**2 * (n2**2 + 1) * np.log((2 * npx * b - nm**2) / (2 * npx * a - nm**2)) / (npx**3 * nm**2)
    tp5 = 16 * n2**3 * (1 / (2 * npx * b - nm**2) - 1 / (2 * npx * a - nm**2)) / npx**3
    return (ts + tp1 + tp2 + tp3 + tp4 + tp5) / (2 * sa**2)


def prospect_d(
    n: np.ndarray, cab: np.ndarray, car: np.ndarray, anth: np.ndarray,
    cbrown: np.ndarray, cw: np.ndarray, cm: np.ndarray, alpha: float = 40.0,
) -> tuple[np.ndarray, np.ndarray]:
    """PROSPECT-D leaf reflectance and transmittance (k, 601) for k leaves.

    Parameters are arrays of shape (k,) (or scalars): structure N, chlorophyll
    a+b Cab and carotenoids Car [µg cm⁻²], anthocyanins Anth [µg cm⁻²], brown
    pigments Cbrown [a.u.], equivalent water thickness Cw [cm], dry matter Cm
    [g cm⁻²]. Generalised plate model: one compact layer with ``alpha`` top
    surface, stacked to N layers with Stokes' equations (Féret et al. 2017).
    """
    table = prospect_d_coefficients()
    nr = table[:, 1]
    kspec = table[:, 2:8]  # Cab, Car, Anth, Cbrown, Cw, Cm
    conc = np.stack(np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in
                                          (cab, car, anth, cbrown, cw, cm))), axis=-1)  # (k, 6)
    nn = np.atleast_1d(np.asarray(n, float))[:, None]
    kall = np.maximum(conc @ kspec.T / nn, 1e-12)  # (k, 601)
    tau = (1.0 - kall) * np.exp(-kall) + kall**2 * exp1(kall)
    talf = _tav(alpha, nr)
    t12 = _tav(90.0, nr)
    ralf, r12 = 1.0 - talf, 1.0 - t12
    t21 = t12 / nr**2
    r21 = 1.0 - t21
    denom = 1.0 - r21**2 * tau**2
    ta = talf * tau * t21 / denom
    ra = ralf + r21 * tau * ta
    t = t12 * tau * t21 / denom
    r = r12 + r21 * tau * t
    d = np.sqrt(np.maximum((1 + r + t) * (1 + r - t) * (1 - r + t) * (1 - r - t), 0.0))
    a = (1 + r**2 - t**2 + d) / (2 * r)
    b = (1 + t**2 - r**2 + d) / (2 * t)
    bnm1 = b ** (nn - 1.0)
    bn2 = bnm1**2
    den = a**2 * bn2 - 1.0
    rsub = a * (bn2 - 1.0) / den
    tsub = bnm1 * (a**2 - 1.0) / den
    lossless = r + t >= 1.0  # zero absorption: Stokes' limit
    tsub = np.where(lossless, t / (t + (1 - t) * (nn - 1.0)), tsub)
    rsub = np.where(lossless, 1.0 - tsub, rsub)
    den2 = 1.0 - rsub * r
    return ra + ta * rsub * t / den2, ta * tsub / den2


def random_leaves(rng: np.random.Generator, k: int) -> np.ndarray:
    """Reflectance (k, 601) of k random green leaves, parameter ranges of docs/reference.md §R29."""
    r, _ = prospect_d(
        n=rng.uniform(1.2, 2.5, k), cab=rng.uniform(20.0, 80.0, k), car=rng.uniform(5.0, 20.0, k),
        anth=rng.uniform(0.0, 5.0, k), cbrown=rng.uniform(0.0, 0.5, k) * (rng.random(k) < 0.3),
        cw=rng.uniform(0.005, 0.03, k), cm=rng.uniform(0.003, 0.012, k),
    )
    return r


def solar_direct_diffuse() -> tuple[np.ndarray, np.ndarray]:
    """Direct (normal) and diffuse (global − direct) ASTM irradiance on :data:`GRID_NM`.

    The two columns refer to different planes, so the difference is only an
    approximation of skylight — but it has the right blue weighting, which is
    what makes shadows bluer (docs/reference.md §R27).
    """
    _, glob, direct = astm_g173()
    return direct, np.maximum(glob - direct, 0.02 * glob)
