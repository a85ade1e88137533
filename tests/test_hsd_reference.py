"""HCV2 conversion against references that are not the project's own code (docs/reference.md §R5).

- ``.hsd`` bytes packed by hand with :mod:`struct` in the documented field order — header int32 height,
  width, bands, D; int32 start wavelength; float32 step; int32 end wavelength; then float32 means
  [bands], coefficients [D x bands], scores [H·W x D], little-endian, row-major — decoded by the
  product's reader. H != W, so a swapped height/width is caught (a test against the project's own encoder
  is not enough: a shared byte-layout mistake passes both ways).
- The ×0.5 nearest-neighbour rule against ``cv2.resize(x, None, fx=0.5, fy=0.5,
  interpolation=cv2.INTER_NEAREST)`` itself, on odd and even sizes (opencv-python-headless is a test
  dependency only; the product stays free of OpenCV).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from matching import whole

from study.prepare.hsd import decode_hsd, encode_hsd, read_header
from study.prepare.resize import opencv_dst_size, opencv_nn_indices, resize_nearest

H, W, BANDS, D = 5, 7, 6, 3  # H != W, D < bands
START, STEP, END = 449, 4.0, 469


def _pca_parts(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=BANDS).astype(np.float32)
    coeffs = rng.normal(size=(D, BANDS)).astype(np.float32)
    scores = rng.normal(size=(H * W, D)).astype(np.float32)
    return means, coeffs, scores


def _hand_packed(means: np.ndarray, coeffs: np.ndarray, scores: np.ndarray) -> bytes:
    """The file as the release's ``readHSD.m`` reads it, written field by field with struct (no numpy layout)."""
    out = struct.pack("<iiii", H, W, BANDS, D) + struct.pack("<ifi", START, STEP, END)
    out += struct.pack(f"<{BANDS}f", *means.tolist())
    out += struct.pack(f"<{D * BANDS}f", *[coeffs[d, b] for d in range(D) for b in range(BANDS)])
    out += struct.pack(f"<{H * W * D}f", *[scores[p, d] for p in range(H * W) for d in range(D)])
    return out


def _reference_cube(means: np.ndarray, coeffs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Cube = scores @ coeffs + means, reshaped to (H, W, bands), pixel p = row * W + col (raster order)."""
    cube = np.zeros((H, W, BANDS), dtype=np.float64)
    for p in range(H * W):
        row, col = divmod(p, W)
        for b in range(BANDS):
            cube[row, col, b] = means[b] + sum(float(scores[p, d]) * float(coeffs[d, b]) for d in range(D))
    return cube


def test_hand_packed_hsd_decodes_to_the_documented_cube(tmp_path: Path) -> None:
    means, coeffs, scores = _pca_parts()
    path = tmp_path / "20210410_104138_00.hsd"
    path.write_bytes(_hand_packed(means, coeffs, scores))
    assert path.stat().st_size == 28 + 4 * (BANDS + D * BANDS + H * W * D)

    header = read_header(path)
    assert (header.height, header.width, header.bands, header.d) == (H, W, BANDS, D)
    assert (header.start_nm, header.step_nm, header.end_nm) == (START, STEP, END)

    cube, _ = decode_hsd(path)
    assert cube.shape == (H, W, BANDS) and cube.dtype == np.float32
    np.testing.assert_allclose(cube, _reference_cube(means, coeffs, scores), rtol=1e-5, atol=1e-5)

    rows, cols = np.array([0, 2, 4]), np.array([0, 3, 6])  # the last row and the last column exist only if H, W
    part, _ = decode_hsd(path, rows, cols)
    np.testing.assert_allclose(part, _reference_cube(means, coeffs, scores)[rows][:, cols], rtol=1e-5, atol=1e-5)


def test_the_encoder_writes_the_hand_packed_bytes(tmp_path: Path) -> None:
    means, coeffs, scores = _pca_parts(1)
    encode_hsd(tmp_path / "x.hsd", scores.reshape(H, W, D), coeffs, means, START, STEP, END)
    assert (tmp_path / "x.hsd").read_bytes() == _hand_packed(means, coeffs, scores)


def test_a_header_too_short_for_its_body_is_refused(tmp_path: Path) -> None:
    from study.prepare.readers import PrepareError

    means, coeffs, scores = _pca_parts()
    data = _hand_packed(means, coeffs, scores)
    (tmp_path / "cut.hsd").write_bytes(data[:-4])
    with pytest.raises(PrepareError, match="truncated"):
        read_header(tmp_path / "cut.hsd")


def test_read_pca_keeps_the_release_float32_and_equals_float32_arithmetic(tmp_path: Path) -> None:
    """Means, coefficients and scores come back as the stored float32 (no float64 intermediates: the decoded
    cube is float32 arithmetic, bit for bit what the converter and the stored-scores reader compute)."""
    from study.data.storage import pca_decode
    from study.prepare.hsd import read_pca

    means, coeffs, scores = _pca_parts(2)
    path = tmp_path / "x.hsd"
    path.write_bytes(_hand_packed(means, coeffs, scores))
    picked, c, m, _ = read_pca(path)
    assert (picked.dtype, c.dtype, m.dtype) == (np.float32, np.float32, np.float32)
    np.testing.assert_array_equal(picked, scores.reshape(H, W, D))
    np.testing.assert_array_equal(c, coeffs)
    np.testing.assert_array_equal(m, means)
    cube, _ = decode_hsd(path)
    np.testing.assert_array_equal(cube, pca_decode(scores.reshape(H, W, D), coeffs, means))


@pytest.mark.parametrize("field", [0, 1, 2, 3])
def test_a_header_with_a_zero_size_field_is_refused(tmp_path: Path, field: int) -> None:
    from study.prepare.readers import PrepareError

    sizes = [H, W, BANDS, D]
    sizes[field] = 0
    path = tmp_path / "zero.hsd"
    path.write_bytes(struct.pack("<iiii", *sizes) + struct.pack("<ifi", START, STEP, END) + b"\0" * 4096)
    with pytest.raises(PrepareError, match=r"not a valid \.hsd header \(height \d+, width \d+, bands \d+, D \d+\)"):
        read_header(path)


@pytest.mark.parametrize(("h", "w", "bands", "d"), [(1, 1, 1, 1), (12, 10, 4, 4), (3, 40, 6, 1)])
def test_edge_headers_that_are_valid_are_read(tmp_path: Path, h: int, w: int, bands: int, d: int) -> None:
    """One pixel, D = bands, more than 90 pixels: all valid (the checks are < 1, D > bands, > 10^9 pixels)."""
    path = tmp_path / "edge.hsd"
    path.write_bytes(struct.pack("<iiii", h, w, bands, d) + struct.pack("<ifi", START, STEP, END)
                     + b"\0" * (4 * (bands + d * bands + h * w * d)))
    header = read_header(path)
    assert (header.height, header.width, header.bands, header.d) == (h, w, bands, d)


def test_a_header_claiming_over_a_billion_pixels_is_refused_as_invalid(tmp_path: Path) -> None:
    from study.prepare.readers import PrepareError

    path = tmp_path / "huge.hsd"
    path.write_bytes(struct.pack("<iiii", 100_000, 10_001, 4, 2) + struct.pack("<ifi", START, STEP, END))
    with pytest.raises(PrepareError, match=r"not a valid \.hsd header \(height 100000, width 10001"):
        read_header(path)


def test_the_truncated_message_names_the_bytes_the_header_needs(tmp_path: Path) -> None:
    from study.prepare.readers import PrepareError

    means, coeffs, scores = _pca_parts()
    data = _hand_packed(means, coeffs, scores)
    (tmp_path / "cut.hsd").write_bytes(data[:-4])
    needed = 28 + 4 * (BANDS + D * BANDS + H * W * D)
    with pytest.raises(PrepareError, match=rf": {needed - 4} bytes, but its header \(H {H}, W {W}, bands {BANDS}, "
                       rf"D {D}\) needs {needed}; the file is truncated \(an interrupted download or extraction\?\)$"):
        read_header(tmp_path / "cut.hsd")


def test_exactly_a_billion_pixels_is_a_valid_header(tmp_path: Path) -> None:
    """The bound is "more than 10^9 pixels": 31,250 x 32,000 passes it (and is then refused as truncated)."""
    from study.prepare.readers import PrepareError

    path = tmp_path / "billion.hsd"
    path.write_bytes(struct.pack("<iiii", 31_250, 32_000, 4, 2) + struct.pack("<ifi", START, STEP, END))
    with pytest.raises(PrepareError, match=r"bytes, but its header \(H 31250, W 32000, bands 4, D 2\) needs"):
        read_header(path)


SIZES = [(1, 2), (2, 2), (3, 3), (4, 7), (5, 6), (7, 9), (10, 11), (12, 12), (33, 20), (1422 // 6, 1889 // 7)]


@pytest.mark.parametrize("h, w", SIZES)
def test_nearest_rule_equals_opencv_inter_nearest(h: int, w: int) -> None:
    cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless (pip install -e '.[dev]')")
    rng = np.random.default_rng(h * 100 + w)
    labels = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    cube = rng.normal(size=(h, w, 7)).astype(np.float32)
    if round(h * 0.5) < 1 or round(w * 0.5) < 1:
        with pytest.raises(ValueError):
            resize_nearest(labels, 0.5)
        return
    for arr in (labels, cube):
        ref = cv2.resize(arr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST)
        ref = ref if ref.ndim == arr.ndim else ref[..., None]
        ours = resize_nearest(arr, 0.5)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        np.testing.assert_array_equal(ours, ref)


def test_hcv2_full_size_and_other_scales_equal_opencv() -> None:
    cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless (pip install -e '.[dev]')")
    h, w = 1422, 1889  # HCV2's raw size (docs/reference.md §R1): halved to 711 x 944
    index = (np.arange(h, dtype=np.int32)[:, None] * w + np.arange(w, dtype=np.int32)[None, :])
    ref = cv2.resize(index, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST)
    assert ref.shape == (711, 944) == (opencv_dst_size(h, 0.5), opencv_dst_size(w, 0.5))
    np.testing.assert_array_equal(resize_nearest(index, 0.5), ref)
    np.testing.assert_array_equal(ref // w, np.broadcast_to(opencv_nn_indices(h, 0.5)[:, None], ref.shape))
    small = index[:37, :53]
    for fx in (0.25, 0.75, 1 / 3):
        np.testing.assert_array_equal(resize_nearest(small, fx),
                                      cv2.resize(small, None, fx=fx, fy=fx, interpolation=cv2.INTER_NEAREST))


def test_default_scale_is_the_benchmarks_half_and_the_two_axes_scale_apart() -> None:
    """``resize_nearest(x)`` is HCV2's x0.5 rule (the converter's default), and fx / fy act on their own axes."""
    cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless (pip install -e '.[dev]')")
    index = np.arange(37 * 53, dtype=np.int32).reshape(37, 53)
    np.testing.assert_array_equal(resize_nearest(index),
                                  cv2.resize(index, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST))
    for fx, fy in ((0.5, 0.25), (0.25, 0.75), (1 / 3, 0.5)):
        ref = cv2.resize(index, None, fx=fx, fy=fy, interpolation=cv2.INTER_NEAREST)
        assert resize_nearest(index, fx, fy).shape == ref.shape
        np.testing.assert_array_equal(resize_nearest(index, fx, fy), ref)


def test_an_empty_output_is_refused_naming_the_scale_and_side() -> None:
    with pytest.raises(ValueError, match=r"^scale 0\.1 turns a side of 4 pixels into 0; OpenCV rejects an empty"):
        opencv_dst_size(4, 0.1)


def test_short_and_unreadable_files_are_named_word_for_word(tmp_path: Path) -> None:
    import re

    from study.prepare.readers import PrepareError

    short = tmp_path / "short.hsd"
    short.write_bytes(b"\0" * 27)
    with pytest.raises(PrepareError, match=whole(
            f"{short}: only 27 bytes, shorter than the 28-byte .hsd header; the file is truncated or not an "
            ".hsd file")):
        read_header(short)
    missing = tmp_path / "missing.hsd"
    with pytest.raises(PrepareError, match="^" + re.escape(f"{missing}: cannot read ([Errno 2] No such file")):
        read_header(missing)
    bad = tmp_path / "bad.hsd"
    bad.write_bytes(struct.pack("<iiii", 2, 3, 4, 5) + struct.pack("<ifi", START, STEP, END))
    with pytest.raises(PrepareError, match=whole(
            f"{bad}: not a valid .hsd header (height 2, width 3, bands 4, D 5); the file is corrupt or not an "
            ".hsd file")):
        read_header(bad)


def test_the_fixture_encoder_writes_hcv2s_grid_and_float32_whatever_it_is_given(tmp_path: Path) -> None:
    """The encoder builds the tiny HCV2 releases of the tests: HCV2's 449-957 nm grid in 4 nm steps by default,
    and float32 bytes even from float64 arrays (a float64 body would decode as garbage)."""
    from study.prepare.hsd import read_pca

    means, coeffs, scores = _pca_parts(3)
    path = tmp_path / "f64.hsd"
    encode_hsd(path, scores.reshape(H, W, D).astype(np.float64), coeffs.astype(np.float64),
               means.astype(np.float64))
    header = read_header(path)
    assert (header.start_nm, header.step_nm, header.end_nm) == (449, 4.0, 957)
    picked, c, m, _ = read_pca(path)
    np.testing.assert_array_equal(picked, scores.reshape(H, W, D))
    np.testing.assert_array_equal(c, coeffs)
    np.testing.assert_array_equal(m, means)
