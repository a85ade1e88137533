"""Scene radiance in camera bands: reflectance × (sun + sky) + sky glare + lamps (docs/reference.md §R29 step 3).

    L = ρ·(s·g·E_dir + f·E_diff)/π + ρ_spec·L_sky + L_emit

with s the cast-shadow map, g the geometric sun factor of the surface
(horizontal ground: sin of the sun elevation; facades: cos elevation × facing)
and f the visible sky fraction (1 for ground, ~0.5 for vertical surfaces).
Shadowed pixels keep only the blue-weighted skylight, so they are darker *and*
bluer than the same material in the sun. Sky pixels are emitted radiance
L_sky ∝ E_diff·(λ/550)^-α, brighter and whiter towards the horizon.

Because everything is linear in ρ, each instance's spectra are projected onto
the camera bands once (n_instances × 601 @ 601 × C) and pixels are gathered by
instance id: no per-pixel spectral work and no Python loop over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.data import spectra as sp
from study.data.synthetic import materials as mat
from study.data.synthetic.scene import Scene

_G = sp.GRID_NM


@dataclass(frozen=True)
class Illumination:
    """One image's light: direct-normal and diffuse irradiance (601,), sky radiance at zenith/horizon."""

    e_dir: np.ndarray
    e_diff: np.ndarray
    sin_elev: float
    cos_elev: float
    sky_zenith: np.ndarray
    sky_horizon: np.ndarray
    overcast: bool


def draw_illumination(rng: np.random.Generator) -> Illumination:
    """Random sun elevation (10–70°), aerosol load and clear/overcast sky around ASTM G173 (AM 1.5)."""
    direct0, diffuse0 = sp.solar_direct_diffuse()
    _, glob0, _ = sp.astm_g173()
    elev = np.deg2rad(rng.uniform(10.0, 70.0))
    airmass = min(1.0 / np.sin(elev), 5.6)
    lam_um = _G / 1000.0
    tau = 0.0088 * lam_um**-4.05 + rng.uniform(0.03, 0.2) * lam_um**-1.3  # Rayleigh + aerosol
    e_dir = direct0 * np.exp(-tau * (airmass - 1.5))
    e_diff = diffuse0 * rng.uniform(0.8, 1.3)
    overcast = bool(rng.random() < 0.3)
    if overcast:  # clouds: little direct sun, bright, nearly flat diffuse light
        e_dir = e_dir * rng.uniform(0.0, 0.15)
        e_diff = glob0 * rng.uniform(0.25, 0.6)
        alpha = rng.uniform(0.0, 0.4)
        zenith = mat.sky_radiance(e_diff, alpha, rng.uniform(0.8, 1.2))
        horizon = zenith * rng.uniform(1.0, 1.4)
    else:
        alpha = rng.uniform(0.5, 2.5)
        zenith = mat.sky_radiance(e_diff, alpha, rng.uniform(0.8, 2.0))
        horizon = mat.sky_radiance(e_diff, alpha * rng.uniform(0.2, 0.6), rng.uniform(1.5, 3.0))
    return Illumination(e_dir, e_diff, float(np.sin(elev)), float(np.cos(elev)), zenith, horizon, overcast)


def reference_illumination() -> Illumination:
    """ASTM G173 as is: the white-reference light of the HSI-Drive-like output and of the shadow test."""
    direct0, diffuse0 = sp.solar_direct_diffuse()
    zen = mat.sky_radiance(diffuse0, 1.5, 1.0)
    s = np.sin(np.deg2rad(41.8))  # the G173 direct beam is for a solar zenith angle of 48.2°
    return Illumination(direct0, diffuse0, float(s), float(np.sqrt(1 - s * s)), zen, zen * 1.5, False)


def white_signal(response: np.ndarray) -> np.ndarray:
    """Band signal (C,) of a reflectance-1 horizontal panel in full sun under the reference light."""
    ill = reference_illumination()
    return response @ ((ill.sin_elev * ill.e_dir + ill.e_diff) / np.pi)


def smooth_field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise (H, W): bilinear upsampling of a coarse random grid."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw))
    y = (np.arange(h) + 0.5) / cell
    x = (np.arange(w) + 0.5) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bot = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    f = top * (1 - fy) + bot * fy
    return (f - f.mean()) / max(float(f.std()), 1e-9)


def instance_materials(scene: Scene, rng: np.random.Generator) -> list[mat.Material | None]:
    """One material per instance (None for sky, which is emitted radiance)."""
    return [None if kind == "sky" else mat.draw_material(rng, kind) for kind in scene.kinds]


def band_signal(scene: Scene, materials: list[mat.Material | None], ill: Illumination,
                response: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise-free band signal (H, W, C) = response @ radiance of every pixel of ``scene``."""
    n = len(materials)
    h, w = scene.inst.shape
    rho = np.zeros((n, _G.size))
    rho_alt = np.zeros((n, _G.size))
    extra = np.zeros((n, _G.size))  # radiance not scaled by direct sun: glare, lamps
    extra_alt = np.zeros((n, _G.size))
    g = np.zeros(n)
    f = np.ones(n)
    tex = np.zeros(n)
    mix = np.zeros(n)
    sky_mean = 0.5 * (ill.sky_zenith + ill.sky_horizon)
    white550 = (ill.sin_elev * ill.e_dir[150] + ill.e_diff[150]) / np.pi
    for i, m in enumerate(materials):
        if m is None:  # sky: emitted radiance, mixed zenith -> horizon below
            extra[i], extra_alt[i] = ill.sky_zenith, ill.sky_horizon
            tex[i], mix[i] = 0.01, 1.0
            continue
        rho[i], rho_alt[i] = m.rho, m.rho_alt
        extra[i] = extra_alt[i] = m.specular * sky_mean + (0.0 if m.emission is None else m.emission * white550)
        vertical = scene.vertical[i]
        g[i] = scene.sun[i] * (ill.cos_elev if vertical else ill.sin_elev)
        f[i] = rng.uniform(0.4, 0.7) if vertical else 1.0
        tex[i], mix[i] = m.texture, m.mix
    f32 = np.float32
    a = ((rho * ill.e_dir / np.pi) @ response.T * g[:, None]).astype(f32)
    b = ((rho * ill.e_diff / np.pi) @ response.T * f[:, None] + extra @ response.T).astype(f32)
    a_alt = ((rho_alt * ill.e_dir / np.pi) @ response.T * g[:, None]).astype(f32)
    b_alt = ((rho_alt * ill.e_diff / np.pi) @ response.T * f[:, None] + extra_alt @ response.T).astype(f32)
    inst = scene.inst
    s = scene.shadow[..., None].astype(f32)
    field = np.clip(0.5 + 0.35 * smooth_field(rng, h, w, rng.uniform(3.0, 10.0)), 0.0, 1.0)
    rows = (np.arange(h) + 0.5)[:, None] / max(scene.horizon, 1)
    sky_m = np.clip(rows**2 + 0.15 * smooth_field(rng, h, w, 12.0), 0.0, 1.0)
    is_sky = np.array([k == "sky" for k in scene.kinds])[inst]
    m = np.where(is_sky, sky_m, field * mix[inst])[..., None].astype(f32)
    main = s * a[inst] + b[inst]
    alt = s * a_alt[inst] + b_alt[inst]
    out = main + m * (alt - main)
    noise = 0.6 * smooth_field(rng, h, w, rng.uniform(2.0, 6.0)) + 0.8 * rng.standard_normal((h, w))
    out *= (1.0 + tex[inst] * noise)[..., None].astype(f32)
    return np.maximum(out, f32(0.0))


def material_under_sun_and_shadow(reflectance: np.ndarray, response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band signal (C,) of a horizontal surface in full sun and in a cast shadow (reference light).

    Exposes the shadow physics for tests and documentation: the shadowed
    signal lacks the direct beam, so it is darker and relatively bluer.
    """
    ill = reference_illumination()
    sunlit = response @ (reflectance * (ill.sin_elev * ill.e_dir + ill.e_diff) / np.pi)
    shadow = response @ (reflectance * ill.e_diff / np.pi)
    return sunlit, shadow
