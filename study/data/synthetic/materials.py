"""Reflectance of the materials in a driving scene, one spectrum per object instance.

Measured pools (earthlib, PROSPECT-D) come from :mod:`study.data.spectra`;
the materials no package covers (road markings, car paint, unpainted metal,
windows, clothing, lamps, sky) follow the physics rules of thumb in
``docs/reference.md`` §R26–§R27. Every function returns spectra on the
1 nm grid :data:`~study.data.spectra.GRID_NM` (601 samples, 400–1000 nm).

Per-instance variation follows docs/reference.md §R29: a brightness factor ×U(0.7, 1.3)
and a smooth low-order (Legendre) perturbation of ±3–5 %, so two cars of the
"same" paint never share a spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.data import spectra as sp

_G = sp.GRID_NM
_X = (_G - 700.0) / 300.0  # grid mapped to [-1, 1] for the Legendre perturbation
_LEG = np.stack([np.ones_like(_X), _X, 0.5 * (3 * _X**2 - 1), 0.5 * (5 * _X**3 - 3 * _X)])


def _sig(center: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(_G - center) / width))


def _gauss(center: float, fwhm: float) -> np.ndarray:
    return np.exp(-4.0 * np.log(2.0) * ((_G - center) / fwhm) ** 2)


def vary(rng: np.random.Generator, rho: np.ndarray, bright: tuple[float, float] = (0.7, 1.3)) -> np.ndarray:
    """Per-instance variation: brightness ×U(bright) and a smooth ±3–5 % spectral tilt/curvature."""
    coef = rng.normal(0.0, 0.03, 4)
    coef[0] = 0.0
    shape = 1.0 + coef @ _LEG
    return np.clip(rho * shape * rng.uniform(*bright), 0.002, 1.05)


def pool_draw(rng: np.random.Generator, pool: str) -> np.ndarray:
    """One random measured spectrum (601,) from an earthlib pool."""
    arr = sp.material_pool(pool)
    return arr[rng.integers(arr.shape[0])]


def marking(rng: np.random.Generator) -> np.ndarray:
    """White (85 %) or yellow road marking, worn markings mixed 0–70 % with asphalt."""
    if rng.random() < 0.85:
        rho = rng.uniform(0.5, 0.8) * (0.55 + 0.45 * _sig(420.0, 8.0))  # TiO2 drops below ~420 nm
    else:
        lo, hi = rng.uniform(0.06, 0.12), rng.uniform(0.5, 0.7)
        rho = lo + (hi - lo) * _sig(rng.uniform(500.0, 545.0), rng.uniform(8.0, 15.0))
    wear = rng.uniform(0.0, 0.7) if rng.random() < 0.6 else 0.0
    return (1.0 - wear) * rho + wear * pool_draw(rng, "road")


def pigment(rng: np.random.Generator, colour: str | None = None) -> np.ndarray:
    """Paint / plastic colour: the shapes of docs/reference.md §R26 (red edge at ~600 nm, white flat,
    black with an optional NIR-transparent rise, blue/green with high NIR, grey metallic)."""
    colours = ("white", "black", "grey", "red", "blue", "green", "yellow", "silver")
    c = colour or colours[rng.choice(len(colours), p=(0.22, 0.2, 0.16, 0.1, 0.1, 0.05, 0.04, 0.13))]
    u = rng.uniform
    if c == "white":
        return u(0.6, 0.88) * (0.6 + 0.4 * _sig(415.0, 8.0))
    if c == "black":
        nir = u(0.0, 0.25) if rng.random() < 0.5 else 0.0
        return u(0.03, 0.06) + nir * _sig(u(680.0, 760.0), 20.0)
    if c in ("grey", "silver"):
        lvl = u(0.12, 0.3) if c == "grey" else u(0.3, 0.55)
        return lvl * (1.0 + u(-0.1, 0.1) * _X)
    if c == "red":
        return u(0.04, 0.08) + u(0.35, 0.75) * _sig(u(585.0, 615.0), u(8.0, 15.0))
    if c == "yellow":
        return u(0.06, 0.12) + u(0.45, 0.7) * _sig(u(500.0, 540.0), u(8.0, 14.0))
    if c == "blue":
        return (u(0.04, 0.08) + u(0.15, 0.35) * _gauss(u(440.0, 480.0), u(60.0, 100.0))
                + u(0.2, 0.5) * _sig(u(690.0, 760.0), 25.0))
    # green
    return (u(0.04, 0.07) + u(0.1, 0.25) * _gauss(u(515.0, 550.0), u(50.0, 80.0))
            + u(0.2, 0.5) * _sig(u(690.0, 740.0), 20.0))


def unpainted_metal(rng: np.random.Generator) -> np.ndarray:
    """Aluminium (0.5–0.9, broad Al interband dip at ~830 nm), galvanised steel (0.3–0.6 flat) or rust."""
    kind = rng.random()
    if kind < 0.35:
        return rng.uniform(0.5, 0.85) * (1.0 - rng.uniform(0.08, 0.2) * _gauss(830.0, 140.0))
    if kind < 0.85:
        return rng.uniform(0.3, 0.6) * (1.0 + rng.uniform(-0.05, 0.08) * _X)
    return (rng.uniform(0.04, 0.08) + rng.uniform(0.15, 0.3) * _sig(rng.uniform(560.0, 620.0), 30.0)
            - 0.05 * _gauss(880.0, 90.0))


def car_window(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Car window: dark interior (the reflectance) plus a 4–8 % specular sky reflection (returned apart,
    because it reflects sky *radiance*, not irradiance)."""
    interior = rng.uniform(0.015, 0.05) * (1.0 + rng.uniform(0.0, 0.6) * _sig(700.0, 30.0))
    return interior, float(rng.uniform(0.04, 0.08))


def clothing(rng: np.random.Generator) -> np.ndarray:
    """Textiles: a dye colour; cotton/wool are bright in the NIR, dark synthetics stay dark (§R26)."""
    dye = pigment(rng)
    cotton = rng.random() < 0.55
    nir = rng.uniform(0.4, 0.7) if cotton else rng.uniform(0.05, 0.25)
    edge = _sig(rng.uniform(680.0, 740.0), 20.0)
    return np.clip(dye * (1 - edge) + np.maximum(dye, nir) * edge, 0.02, 0.95)


def skin(rng: np.random.Generator) -> np.ndarray:
    """Skin: melanin-darkened visible, haemoglobin dips at 542/577 nm, high NIR."""
    mel = rng.uniform(0.1, 0.7)
    base = (0.25 + 0.35 * _sig(600.0, 30.0)) * (1.0 - mel * (1.0 - _sig(700.0, 80.0)))
    return np.clip(base - 0.04 * _gauss(542.0, 20.0) - 0.05 * _gauss(577.0, 20.0), 0.03, 0.8)


def vegetation(rng: np.random.Generator, grass: bool) -> np.ndarray:
    """Trees/hedges (canopy-dominated, darker) or grass (brighter, partly dry, soil showing through).

    Both mix the PROSAIL canopy pool with PROSPECT-D leaves, so the two classes
    overlap spectrally and differ mostly by context and brightness, as in real data.
    """
    leaf = sp.random_leaves(rng, 1)[0]
    canopy = pool_draw(rng, "canopy")
    w = rng.uniform(0.3, 0.9)
    rho = w * canopy + (1.0 - w) * leaf * rng.uniform(0.55, 0.9)
    if grass:
        dry = rng.uniform(0.0, 0.45) if rng.random() < 0.5 else 0.0
        soil = rng.uniform(0.0, 0.25)
        rho = (1 - dry - soil) * rho * rng.uniform(0.9, 1.2) + dry * pool_draw(rng, "npv") + soil * pool_draw(
            rng, "soil")
    else:
        rho = rho * rng.uniform(0.6, 1.0)  # self-shadowing inside tree crowns
    return rho


def water(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Puddle: dark water (reflectance ~0.02–0.04) plus a strong grazing-angle sky reflection."""
    rho = rng.uniform(0.015, 0.03) + rng.uniform(0.005, 0.015) * _gauss(550.0, 120.0)
    return rho, float(rng.uniform(0.1, 0.4))


def led(colour: str) -> np.ndarray:
    """Relative emission of a traffic-light LED (narrow peak) — added as radiance, not reflectance."""
    centre = {"red": 630.0, "amber": 592.0, "green": 505.0}[colour]
    return _gauss(centre, 22.0)


def sky_radiance(e_diffuse: np.ndarray, alpha: float, level: float) -> np.ndarray:
    """Sky is emissive: L ∝ E_diff·(λ/550)^-α, scaled so that π·L/E_diff(550 nm) = ``level`` (§R27)."""
    shape = e_diffuse * (_G / 550.0) ** (-alpha)
    return level * shape / shape[150] * e_diffuse[150] / np.pi


@dataclass
class Material:
    """What the renderer needs per instance.

    ``rho`` is the Lambertian reflectance (601,); ``rho_alt`` a second spectrum of
    the same material that pixels blend towards (stains, patches, ageing) so an
    instance is spectrally textured; ``specular`` is the fraction of sky radiance
    mirrored (clear-coat, glass, water); ``emission`` is radiance in units of the
    sky radiance (lamps) or None; ``texture`` the per-pixel brightness noise.
    """

    rho: np.ndarray
    rho_alt: np.ndarray
    specular: float = 0.0
    emission: np.ndarray | None = None
    texture: float = 0.03
    mix: float = 0.3


def draw_material(rng: np.random.Generator, kind: str) -> Material:
    """A random material of one kind (the ``kind`` names come from :mod:`study.data.synthetic.scene`)."""
    m = _DRAW.get(kind)
    if m is None:
        raise ValueError(f"unknown material kind {kind!r}; valid kinds: {', '.join(sorted(_DRAW))}")
    return m(rng)


def _pooled(pool: str, texture: float = 0.03, mix: float = 0.4):
    def draw(rng: np.random.Generator) -> Material:
        return Material(vary(rng, pool_draw(rng, pool)), vary(rng, pool_draw(rng, pool)),
                        texture=texture, mix=mix)
    return draw


def _facade(rng: np.random.Generator) -> Material:
    pool = ("sidewalk", "sidewalk", "sidewalk", "paint", "paint", "tile", "roof", "metal")[rng.integers(8)]
    return Material(vary(rng, pool_draw(rng, pool)), vary(rng, pool_draw(rng, "sidewalk")), texture=0.03, mix=0.3)


def _car_body(rng: np.random.Generator) -> Material:
    rho = vary(rng, pigment(rng) if rng.random() < 0.8 else pool_draw(rng, "paint"), (0.85, 1.15))
    return Material(rho, rho * rng.uniform(0.6, 0.9), specular=float(rng.uniform(0.02, 0.06)), texture=0.02,
                    mix=0.3)


def _glass(rng: np.random.Generator) -> Material:
    rho, spec = car_window(rng)
    return Material(rho, rho, specular=spec, texture=0.02, mix=0.0)


def _window(rng: np.random.Generator) -> Material:
    rho, spec = car_window(rng)
    if rng.random() < 0.3:
        rho = pool_draw(rng, "glass") * rng.uniform(0.15, 0.4)  # reflective facade glass
    return Material(rho, rho, specular=spec * 1.5, texture=0.02, mix=0.0)


def _lamp(rng: np.random.Generator) -> Material:
    housing = pigment(rng, "black")
    colour = ("red", "amber", "green")[rng.integers(3)]
    return Material(housing, housing, emission=led(colour) * rng.uniform(3.0, 12.0), texture=0.02, mix=0.0)


def _water(rng: np.random.Generator) -> Material:
    rho, spec = water(rng)
    return Material(rho, rho, specular=spec, texture=0.02, mix=0.0)


def _painted(rng: np.random.Generator) -> Material:
    rho = vary(rng, pigment(rng) if rng.random() < 0.6 else pool_draw(rng, "paint"))
    return Material(rho, rho * 0.85, texture=0.03, mix=0.2)


def _fence(rng: np.random.Generator) -> Material:
    rho = vary(rng, unpainted_metal(rng) if rng.random() < 0.5 else pool_draw(rng, "bark"))
    return Material(rho, rho * 0.7, texture=0.05, mix=0.4)


def _glint(rng: np.random.Generator) -> Material:
    rho = pigment(rng, "white")
    return Material(rho, rho, specular=float(rng.uniform(3.0, 10.0)), texture=0.0, mix=0.0)


def _metal(rng: np.random.Generator) -> Material:
    return Material(vary(rng, unpainted_metal(rng), (0.8, 1.2)), vary(rng, unpainted_metal(rng), (0.6, 1.0)),
                    specular=0.05, texture=0.03, mix=0.2)


def _of(fn, texture: float = 0.03, mix: float = 0.3, bright: tuple[float, float] = (0.7, 1.3)):
    def draw(rng: np.random.Generator) -> Material:
        return Material(vary(rng, fn(rng), bright), vary(rng, fn(rng), bright), texture=texture, mix=mix)
    return draw


_DRAW = {
    "road": _pooled("road", 0.05, 0.5),
    "patch": _pooled("asphalt", 0.04, 0.3),
    "sidewalk": _pooled("sidewalk", 0.05, 0.5),
    "soil": _pooled("soil", 0.05, 0.5),
    "sand": _pooled("sand", 0.05, 0.5),
    "bark": _pooled("bark", 0.05, 0.4),
    "roof": _pooled("roof", 0.04, 0.3),
    "facade": _facade,
    "marking": _of(marking, 0.04, 0.2, (0.85, 1.15)),
    "tree": _of(lambda r: vegetation(r, grass=False), 0.05, 0.6),
    "grass": _of(lambda r: vegetation(r, grass=True), 0.05, 0.6),
    "car_body": _car_body,
    "car_glass": _glass,
    "window": _window,
    "rubber": _of(lambda r: pigment(r, "black"), 0.02, 0.0, (0.8, 1.2)),
    "metal": _metal,
    "painted": _painted,
    "fence": _fence,
    "cloth": _of(clothing, 0.04, 0.3, (0.85, 1.15)),
    "skin": _of(skin, 0.02, 0.0, (0.85, 1.15)),
    "lamp": _lamp,
    "water": _water,
    "glint": _glint,
}
MATERIAL_KINDS: tuple[str, ...] = tuple(sorted(_DRAW))
