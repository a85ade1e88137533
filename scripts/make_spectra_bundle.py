#!/usr/bin/env python
"""Build ``study/data/spectra_bundle.npz``: the real spectra the embedded default needs, as package data.

Why: a wheel must run ``hsistudy run --smoke`` with no other file, and installing the
data packages with their dependencies costs far more than the few MB of data read
from them. The bundle holds, unchanged (same dtypes, same values):

- Indian Pines cube and labels (tensorly 0.10.0; data CC BY 3.0, package BSD-3-Clause);
- earthlib 1.1.0's spectral library, only the bands up to 1010 nm that the loaders use,
  with LEVEL_2/LEVEL_3/SOURCE metadata (MIT);
- the ASTM G173-03 table shipped by pvlib 0.16.1 (BSD-3-Clause).

prosail's PROSPECT-D table is NOT bundled: the prosail package states no licence, so
it stays an ordinary dependency and is read from the installed package.

Run from the repository root with the packages of requirements-data.txt installed::

    .venv/bin/python scripts/make_spectra_bundle.py          # writes study/data/spectra_bundle.npz
    .venv/bin/python scripts/make_spectra_bundle.py --check  # exit 1 if the committed bundle differs
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from study.data.spectra import BUNDLE_PATH, EARTHLIB_MAX_NM, package_dir  # noqa: E402

SOURCES = {
    "tensorly": {"version": "0.10.0", "licence": "BSD-3-Clause (package); Indian Pines data CC BY 3.0",
                 "citation": "Baumgardner, M. F., Biehl, L. L., Landgrebe, D. A. (2015). 220 Band AVIRIS "
                             "Hyperspectral Image Data Set: June 12, 1992 Indian Pine Test Site 3. Purdue "
                             "University Research Repository. doi:10.4231/R7RX991C"},
    "earthlib": {"version": "1.1.0", "licence": "MIT (Copyright (c) 2023 Christopher Anderson)",
                 "citation": "earthlib spectral library, https://github.com/earth-chris/earthlib; sources: "
                             "ICRAF-ISRIC soil spectral library, ASD urban spectra of Santa Barbara, PROSAIL "
                             "simulations, SpecEvo"},
    "pvlib": {"version": "0.16.1", "licence": "BSD-3-Clause",
              "citation": "ASTM G173-03 reference solar spectral irradiance (NREL), as shipped in pvlib-python"},
}


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def build() -> dict[str, np.ndarray]:
    """Read the registry packages' files (by path, as the loaders do) into the bundle's arrays."""
    for name, meta in SOURCES.items():
        if version(name) != meta["version"]:
            raise SystemExit(f"{name} {version(name)} installed, the bundle is made from {meta['version']}")
    tl = package_dir("tensorly") / "datasets" / "data"
    el = package_dir("earthlib") / "data"
    astm = package_dir("pvlib") / "data" / "ASTMG173.csv"
    cube = np.load(tl / "Indian_pines_corrected.npy")
    labels = np.load(tl / "Indian_pines_gt.npy")
    hdr = (el / "spectra.sli.hdr").read_text()
    wl = 1000.0 * np.array([float(v) for v in re.search(r"wavelength = \{(.*?)\}", hdr, re.S).group(1).split(",")
                            if v.strip()])
    lines = int(re.search(r"lines\s*=\s*(\d+)", hdr).group(1))
    raw = np.fromfile(el / "spectra.sli", dtype="<f4").reshape(lines, wl.size)
    with (el / "spectra.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = wl <= EARTHLIB_MAX_NM
    files = {"tensorly/datasets/data/Indian_pines_corrected.npy": _sha16(tl / "Indian_pines_corrected.npy"),
             "tensorly/datasets/data/Indian_pines_gt.npy": _sha16(tl / "Indian_pines_gt.npy"),
             "earthlib/data/spectra.sli": _sha16(el / "spectra.sli"),
             "earthlib/data/spectra.csv": _sha16(el / "spectra.csv"),
             "pvlib/data/ASTMG173.csv": _sha16(astm)}
    info = {"sources": SOURCES, "files_sha256_16": files,
            "not_bundled": {"prosail": "PROSPECT-D coefficients: the package states no licence, so it is a "
                                       "dependency and read from the installed package"}}
    return {
        "ip_cube": cube, "ip_labels": labels,
        "earthlib_wavelengths_nm": wl, "earthlib_spectra": np.ascontiguousarray(raw[:, keep]),
        "earthlib_level2": np.array([r["LEVEL_2"] for r in rows]),
        "earthlib_level3": np.array([r["LEVEL_3"] for r in rows]),
        "earthlib_source": np.array([r["SOURCE"] for r in rows]),
        "astm_g173": np.genfromtxt(astm, delimiter=",", skip_header=2),
        "info_json": np.array(json.dumps(info, sort_keys=True)),
    }


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def same(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Content equality (zip timestamps make the bytes differ between builds)."""
    if not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as old:
        return set(old.files) == set(arrays) and all(np.array_equal(old[k], v) for k, v in arrays.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=BUNDLE_PATH)
    p.add_argument("--check", action="store_true", help="only compare with the existing bundle")
    args = p.parse_args(argv)
    arrays = build()
    if args.check:
        ok = same(args.out, arrays)
        print(f"{args.out}: {'up to date' if ok else 'DIFFERS from the registry packages'}")
        return 0 if ok else 1
    data = encode(arrays)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
