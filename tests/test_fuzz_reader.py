"""Fuzzing the HDF5 reader and validators: every input loads or raises the project's own error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.data.h5reader import H5Split
from study.data.specs import get_spec
from study.data.subsets import parse_fractions
from study.errors import DataValidationError, HsiStudyError

SPEC = get_spec("hyko2")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from(["float32", "float64", "float16", "int16", "uint8", "int64", "bool", "S3"])
dims = st.lists(st.integers(0, 5), min_size=0, max_size=4)
WAVELENGTHS = st.lists(st.one_of(st.floats(0, 3000), st.just(float("nan"))), max_size=16).map(np.array)
values = st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 255.0, 11.0, 1e30])


@st.composite
def samples(draw) -> list[dict]:
    out = []
    for i in range(draw(st.integers(0, 3))):
        sample: dict = {"name": f"s{i}", "kind": draw(st.sampled_from(["group", "dataset"]))}
        for key in ("image", "labels", "data"):
            if draw(st.booleans()):
                sample[key] = (draw(dims), draw(dtypes), draw(values))
        out.append(sample)
    return out


def _write(path: Path, spec_samples: list[dict], wavelengths) -> None:
    with h5py.File(path, "w") as fh:
        if wavelengths is not None:
            fh.attrs["wavelengths"] = wavelengths
        for s in spec_samples:
            if s["kind"] == "dataset":
                fh.create_dataset(s["name"], data=np.zeros(3))
                continue
            g = fh.create_group(s["name"])
            for key in ("image", "labels", "data"):
                if key in s:
                    shape, dtype, fill = s[key]
                    with np.errstate(invalid="ignore", over="ignore"):  # nan/1e30 into ints: garbage on purpose
                        arr = np.full(shape, fill if dtype not in ("bool", "S3") else 1).astype(dtype)
                    g.create_dataset(key, data=arr)


def _open(path: Path) -> None:
    try:
        split = H5Split(path, SPEC, check_values=True)
        for i in range(len(split)):
            image, labels = split.read(i)
            assert image.dtype == np.float32 and labels.dtype == np.int64
            assert np.isfinite(image).all()
            assert ((labels >= 0) & (labels < SPEC.n_classes)).all()
        split.close()
    except DataValidationError:
        pass


@FUZZ
@given(samples(), st.one_of(st.none(), WAVELENGTHS))
def test_malformed_hdf5_structures_load_or_raise_our_error(spec_samples, wavelengths) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "hyko2_train.h5"
        _write(path, spec_samples, wavelengths)
        _open(path)


@FUZZ
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 4096))
def test_random_bytes_and_truncated_files_raise_our_error(blob, cut) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "hyko2_train.h5"
        with h5py.File(path, "w") as fh:
            g = fh.create_group("s0")
            g.create_dataset("image", data=np.ones((4, 5, SPEC.n_bands), "float32"))
            g.create_dataset("labels", data=np.ones((4, 5), "uint8"))
        good = path.read_bytes()
        path.write_bytes(good[:cut] + blob if cut < len(good) else blob)
        _open(path)


@FUZZ
@given(st.text(max_size=30))
def test_fraction_lists_parse_or_raise_our_error(text) -> None:
    try:
        fracs = parse_fractions(text)
    except HsiStudyError:
        return
    assert fracs and all(0 < f <= 1 for f in fracs) and list(fracs) == sorted(set(fracs))
