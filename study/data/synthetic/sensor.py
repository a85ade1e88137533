"""The camera: band responses, radiometry and artefacts of the three HS3-Bench sensors.

docs/reference.md §R28 lists what separates a driving-scene hyperspectral camera from
an airborne spectrometer; each item is modelled here so that networks face the
same nuisances as on real cubes:

* spectral response functions (SRFs) centred on the spec's real band centres:
  Gaussian main peak (HyKo2 / HSI-Drive Fabry–Pérot mosaics FWHM 10–20 nm with
  side peaks and a flat leak; HCV2 4–8 nm), silicon QE falling to ~0.2 at 900 nm;
* mosaic band misregistration (HyKo2 4×4, HSI-Drive 5×5): each band is
  shifted by up to ~1 px by its position in the filter mosaic, which creates
  mixed spectra at every edge;
* auto-exposure, vignetting, PRNU (1 %), shot + read noise, quantisation,
  clipping (saturated sky, glints, lamps);
* HCV2's PCA compression (mean + 15 components per cube: low-rank spectra).

Output units (no normalisation, like HS3-Bench, docs/reference.md §R6):
``hyko2`` raw DN scaled to [0, 1] (10 bit); ``hsidrive`` reflectance-like
(DN divided by a simulated white reference at the same exposure, clipped to
[0, 4]); ``hcv2`` calibrated radiance in µW cm⁻² sr⁻¹ nm⁻¹ (≈ 0–60).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from study.data import spectra as sp
from study.data.specs import DatasetSpec

_G = sp.GRID_NM
#: Silicon QE × optics transmission (docs/reference.md §R28: peak 550–650 nm, ~0.25 at 900 nm, <0.15 at 1000 nm).
_QE_KNOTS = ((400, 0.42), (450, 0.58), (500, 0.68), (550, 0.74), (600, 0.75), (650, 0.72), (700, 0.64),
             (750, 0.54), (800, 0.44), (850, 0.35), (900, 0.26), (950, 0.17), (1000, 0.11))
QE: np.ndarray = np.interp(_G, *zip(*_QE_KNOTS, strict=True))


@dataclass(frozen=True)
class Camera:
    """Fixed properties of one dataset's camera (identical for every image)."""

    response: np.ndarray  # (C, 601): SRF (unit area) × QE — band signal = response @ radiance
    mosaic: int  # 0: no mosaic; 4 or 5: side of the filter mosaic
    shifts: np.ndarray  # (C, 2) band offsets (dy, dx) in pixels
    bits: int
    full_well: float  # electrons
    read_noise: float  # electrons
    vignetting: float  # relative loss at the image corners
    output: str  # "dn", "reflectance" or "radiance"
    pca_components: int  # 0: none


#: Per-dataset camera settings: FWHM range (nm), side-peak amplitude range, leak, mosaic, bits, output.
_SETTINGS: dict[str, dict] = {
    "hyko2": dict(fwhm=(10.0, 18.0), side=(0.05, 0.2), leak=(0.005, 0.015), mosaic=4, step=0.7, bits=10,
                  full_well=8000.0, read=15.0, vig=0.25, output="dn", pca=0),
    "hsidrive": dict(fwhm=(12.0, 20.0), side=(0.05, 0.2), leak=(0.005, 0.015), mosaic=5, step=0.5, bits=10,
                     full_well=10000.0, read=12.0, vig=0.2, output="reflectance", pca=0),
    "hcv2": dict(fwhm=(4.0, 8.0), side=(0.0, 0.02), leak=(0.0, 0.003), mosaic=0, step=0.0, bits=12,
                 full_well=20000.0, read=10.0, vig=0.0, output="radiance", pca=15),
}
_DEFAULT = dict(fwhm=(8.0, 15.0), side=(0.0, 0.05), leak=(0.0, 0.005), mosaic=0, step=0.0, bits=12,
                full_well=15000.0, read=12.0, vig=0.1, output="radiance", pca=0)


def _camera_rng(spec: DatasetSpec, *extra: int) -> np.random.Generator:
    # zlib.crc32 rather than hash(): Python's str hash is salted per process, which would break determinism.
    return np.random.default_rng([zlib.crc32(spec.name.encode()), *extra])


@lru_cache(maxsize=16)
def make_camera(spec: DatasetSpec) -> Camera:
    """The (seeded, fixed) camera model of ``spec``, evaluated at its real band centres."""
    cfg = _SETTINGS.get(spec.name, _DEFAULT)
    rng = _camera_rng(spec)
    wl = spec.wavelength_array().astype(np.float64)
    lo, hi = max(400.0, wl.min() - 40.0), min(1000.0, wl.max() + 40.0)
    grid = sp.GRID_NM
    passband = ((grid >= lo) & (grid <= hi)).astype(float)  # external band-pass filter
    rows = []
    for centre in wl:
        fwhm = rng.uniform(*cfg["fwhm"])
        srf = np.exp(-4.0 * np.log(2.0) * ((_G - centre) / fwhm) ** 2)
        for _ in range(rng.integers(0, 3) if cfg["side"][1] > 0.05 else 0):
            offset = rng.choice([-1.0, 1.0]) * rng.uniform(40.0, 150.0)
            srf += rng.uniform(*cfg["side"]) * np.exp(-4.0 * np.log(2.0) * ((_G - centre - offset) / fwhm) ** 2)
        srf = (srf + rng.uniform(*cfg["leak"])) * passband
        rows.append(srf / srf.sum())
    response = np.asarray(rows) * QE[None, :]
    shifts = np.zeros((wl.size, 2))
    if cfg["mosaic"]:
        m = cfg["mosaic"]
        pos = rng.permutation(m * m)[: wl.size]  # where each band's filter sits in the mosaic
        shifts = np.stack([pos // m - (m - 1) / 2, pos % m - (m - 1) / 2], axis=1) * cfg["step"]
    response.setflags(write=False)
    return Camera(response, cfg["mosaic"], shifts, cfg["bits"], cfg["full_well"], cfg["read"], cfg["vig"],
                  cfg["output"], cfg["pca"])


@lru_cache(maxsize=16)
def fixed_pattern(spec: DatasetSpec, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """PRNU gain (H, W, C) (σ ≈ 1 %) and vignetting gain (H, W) of the camera at this image size."""
    cam = make_camera(spec)
    rng = _camera_rng(spec, height, width)
    prnu = 1.0 + rng.normal(0.0, 0.01, (height, width, spec.n_bands)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    r2 = ((yy + 0.5) / height - 0.5) ** 2 + ((xx + 0.5) / width - 0.5) ** 2
    vig = (1.0 - cam.vignetting * r2 / 0.5).astype(np.float32)
    return prnu, vig


def _shift(band: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Sample ``band`` (H, W) at (y + dy, x + dx) bilinearly, clamped at the border."""
    h, w = band.shape
    y = np.clip(np.arange(h) + dy, 0, h - 1)
    x = np.clip(np.arange(w) + dx, 0, w - 1)
    y0, x0 = np.minimum(y.astype(int), h - 2), np.minimum(x.astype(int), w - 2)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = band[y0][:, x0] * (1 - fx) + band[y0][:, x0 + 1] * fx
    bot = band[y0 + 1][:, x0] * (1 - fx) + band[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _blur(cube: np.ndarray, a: float) -> np.ndarray:
    """Separable [a, 1-2a, a] blur along H and W: optics / motion softness."""
    a = np.float32(a)
    out = cube * (1 - 2 * a)
    out[1:] += a * cube[:-1]
    out[:-1] += a * cube[1:]
    out[0] += a * cube[0]
    out[-1] += a * cube[-1]
    res = out * (1 - 2 * a)
    res[:, 1:] += a * out[:, :-1]
    res[:, :-1] += a * out[:, 1:]
    res[:, 0] += a * out[:, 0]
    res[:, -1] += a * out[:, -1]
    return res


def capture(spec: DatasetSpec, signal: np.ndarray, white: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn the band signal (H, W, C) (= response @ radiance) into the stored cube (H, W, C) float32.

    ``white`` (C,) is the band signal of a reflectance-1 panel under the reference
    illumination; it fixes the electron scale and the HSI-Drive white reference.
    """
    cam = make_camera(spec)
    h, w, c = signal.shape
    signal = signal.astype(np.float32)  # float32 from here on: 4× less memory traffic for 128-band cubes
    if h > 2 and w > 2:
        signal = _blur(signal, rng.uniform(0.0, 0.2))
        if cam.mosaic:
            signal = np.stack([_shift(signal[..., k], *cam.shifts[k]) for k in range(c)], axis=-1)
    prnu, vig = fixed_pattern(spec, h, w)
    # Auto-exposure: the median pixel lands at 9–16 % of full well (sky and white paint may clip).
    median = float(np.median(signal.mean(axis=-1)))
    exposure = rng.uniform(0.09, 0.16) * cam.full_well / max(median, 1e-9)
    electrons = signal * (np.float32(exposure) * prnu * vig[..., None])
    noise = rng.standard_normal((2, *electrons.shape), dtype=np.float32)  # shot (Gaussian approx.) and read
    electrons += np.sqrt(np.maximum(electrons, 0.0)) * noise[0] + np.float32(cam.read_noise) * noise[1]
    levels = 2**cam.bits - 1
    dn = np.clip(np.round(electrons * np.float32(levels / cam.full_well)), 0, levels)
    if cam.output == "dn":
        out = dn / levels
    elif cam.output == "reflectance":
        white_dn = (white * exposure * levels / cam.full_well).astype(np.float32)
        out = np.clip(dn / white_dn, 0.0, 4.0)
    else:
        # QE-weighted band area turns electrons back into mean radiance; ×100: W m-2 -> µW cm-2
        gain = (100.0 * cam.full_well / levels / (exposure * cam.response.sum(axis=1))).astype(np.float32)
        out = dn * gain
    if cam.pca_components:
        out = pca_reconstruct(out, cam.pca_components)
    return out.astype(np.float32)


def pca_reconstruct(cube: np.ndarray, n_components: int) -> np.ndarray:
    """Rebuild a cube (H, W, C) from its mean and top ``n_components`` principal components,
    as HCV2's ``.hsd`` files store it (docs/reference.md §R5)."""
    h, w, c = cube.shape
    x = cube.reshape(-1, c)
    mean = x.mean(axis=0, dtype=np.float64)
    xc = (x - mean).astype(np.float32)
    _, vecs = np.linalg.eigh((xc.T @ xc).astype(np.float64))
    v = vecs[:, -min(n_components, c):].astype(np.float32)
    return ((xc @ v) @ v.T + mean.astype(np.float32)).reshape(h, w, c)
