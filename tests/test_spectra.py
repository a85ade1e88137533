"""Real spectra from the registry packages: loading, shapes, physics sanity (docs/reference.md §R22–§R29)."""

from __future__ import annotations

import numpy as np
import pytest

from study.data import spectra as sp
from study.data.synthetic import materials as mat
from study.errors import HsiStudyError


def _at(nm: float) -> int:
    return int(np.argmin(np.abs(sp.GRID_NM - nm)))


def test_grid_is_1nm_400_to_1000() -> None:
    assert sp.GRID_NM[0] == 400.0 and sp.GRID_NM[-1] == 1000.0 and sp.GRID_NM.size == 601


@pytest.mark.parametrize("name", sorted(sp.POOL_GROUPS))
def test_pools_load_with_reflectance_values(name: str) -> None:
    pool = sp.material_pool(name)
    assert pool.ndim == 2 and pool.shape[1] == sp.GRID_NM.size and pool.shape[0] >= 1
    assert np.isfinite(pool).all()
    assert pool.min() >= 0.0 and pool.max() <= 1.1


def test_pool_sizes_match_earthlib_counts() -> None:
    spectra, wl, level2, level3 = sp.earthlib_library()
    assert spectra.shape == (7261, 601) and wl.size == 180
    assert len(level3) == 7261 and level3.count("canopy") == 2000
    assert sp.material_pool("road").shape[0] == 170 + 18 + 48 + 9


def test_pool_means_have_the_documented_shapes() -> None:
    asphalt = sp.material_pool("asphalt").mean(axis=0)
    sidewalk = sp.material_pool("sidewalk").mean(axis=0)
    canopy = sp.material_pool("canopy").mean(axis=0)
    assert asphalt[_at(550)] < 0.1 < sidewalk[_at(550)]  # dark asphalt, bright concrete
    assert canopy[_at(800)] > 3 * canopy[_at(670)]  # red edge


def test_unknown_pool_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid pools"):
        sp.material_pool("unobtainium")


def test_missing_package_names_the_fix() -> None:
    with pytest.raises(HsiStudyError, match="requirements-data.txt"):
        sp.package_dir("no_such_data_package_hsistudy")


def test_exp1_matches_numerical_integral() -> None:
    x = np.array([1e-3, 0.05, 0.5, 1.0, 2.0, 7.0, 25.0])
    v = np.linspace(0.0, 14.0, 200_001)
    ref = np.array([np.trapezoid(np.exp(-xi * np.exp(v)), v) for xi in x])  # E1(x) = ∫ exp(-x e^v) dv
    assert np.allclose(sp.exp1(x), ref, rtol=2e-4, atol=0)


def test_prospect_leaf_has_green_peak_red_well_and_nir_plateau() -> None:
    refl, trans = sp.prospect_d(n=1.5, cab=40.0, car=8.0, anth=1.0, cbrown=0.0, cw=0.01, cm=0.009)
    r = refl[0]
    assert r[_at(550)] > r[_at(670)]
    assert r[_at(800)] > 0.3
    assert np.all((refl >= 0) & (refl + trans <= 1.0 + 1e-9))


def test_random_leaves_shape_and_range() -> None:
    leaves = sp.random_leaves(np.random.default_rng(0), 16)
    assert leaves.shape == (16, 601)
    assert np.all(leaves[:, _at(550)] > leaves[:, _at(670)])
    assert np.all(leaves[:, _at(850)] > 0.3)


def test_astm_oxygen_a_band_is_deep() -> None:
    ext, glob, direct = sp.astm_g173()
    assert glob[_at(760)] < 0.5 * glob[_at(740)]
    assert ext[_at(550)] > glob[_at(550)] > direct[_at(550)] > 0


def test_diffuse_light_is_bluer_than_direct() -> None:
    direct, diffuse = sp.solar_direct_diffuse()
    assert diffuse[_at(450)] / direct[_at(450)] > diffuse[_at(850)] / direct[_at(850)]


@pytest.mark.parametrize("kind", mat.MATERIAL_KINDS)
def test_every_material_kind_draws_a_valid_spectrum(kind: str) -> None:
    m = mat.draw_material(np.random.default_rng(1), kind)
    for arr in (m.rho, m.rho_alt):
        assert arr.shape == (601,) and np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.1


def test_parametric_materials_follow_rules_of_thumb() -> None:
    rng = np.random.default_rng(0)
    red = mat.pigment(rng, "red")
    assert red[_at(650)] > 4 * red[_at(500)]
    alu = [mat.unpainted_metal(np.random.default_rng(s)) for s in range(40)]
    assert any(a[_at(830)] < a[_at(650)] for a in alu)  # Al interband dip
    sky = mat.sky_radiance(sp.solar_direct_diffuse()[1], alpha=2.0, level=1.0)
    assert sky[_at(450)] > sky[_at(650)] > sky[_at(900)]


def test_bundled_spectra_equal_the_registry_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package-data bundle (scripts/make_spectra_bundle.py) holds exactly the packages' numbers."""
    from study.data import pretrain_data as pdata

    if sp.bundle() is None:
        pytest.skip("no study/data/spectra_bundle.npz in this checkout")
    funcs = (sp.bundle, sp.earthlib_library, sp.astm_g173, pdata.indian_pines)
    bundled = [sp.earthlib_library(), sp.astm_g173(), pdata.indian_pines(), sp.source_hashes()]
    monkeypatch.setenv("HSISTUDY_SPECTRA", "packages")
    for f in funcs:
        f.cache_clear()
    try:
        assert sp.bundle() is None
        packaged = [sp.earthlib_library(), sp.astm_g173(), pdata.indian_pines(), sp.source_hashes()]
    finally:
        for f in funcs:
            f.cache_clear()
    for b, p in zip(bundled[:3], packaged[:3], strict=True):
        for x, y in zip(b, p, strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert packaged[3].items() <= bundled[3].items()
