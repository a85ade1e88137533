"""Honest data messages: a folder where a file belongs, unknown root attributes, a damaged generated cache."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from study.data.datasets import open_split, validate_dataset
from study.data.h5reader import H5Split, split_path
from study.data.specs import get_spec
from study.data.synthetic import generator as gen
from study.errors import DataValidationError

HYKO2 = get_spec("hyko2")
TINY = gen.GeneratorConfig(height=24, width=40, n_train=2, n_val=1, n_test=1, seed=1)


def _write(path: Path, **attrs: object) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        g = f.create_group("s00")
        g["image"] = rng.random((4, 5, HYKO2.n_bands))
        g["labels"] = np.full((4, 5), HYKO2.raw_label_of(1), dtype=np.uint8)
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


def test_a_folder_named_like_the_split_file_is_called_a_folder(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _write(split_path(tmp_path, HYKO2, split))
    split_path(tmp_path, HYKO2, "val").mkdir()
    with pytest.raises(DataValidationError) as info:
        validate_dataset(tmp_path, HYKO2)
    msg = str(info.value)
    assert "hyko2_val.h5: is a folder, not an HDF5 file" in msg and "file not found" not in msg
    assert "benchmark.md" not in msg and "shared/reference" not in msg and "README.md" in msg


def test_messages_cite_the_projects_docs_not_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as info:
        open_split(tmp_path, HYKO2, "train")
    assert "shared/reference" not in str(info.value) and "README.md" in str(info.value)


@pytest.mark.parametrize("attrs", [{"creator": "matlab", "version": 7}, {"feature_dim": 256},
                                   {"feature_dim": "many", "source_wavelengths": [500.0]}])
def test_root_attributes_the_reader_does_not_know_are_not_corruption(tmp_path: Path, attrs: dict) -> None:
    path = _write(tmp_path / "hyko2_train.h5", **attrs)
    expect = pytest.warns(UserWarning, match="'feature_dim' is ignored") if "feature_dim" in attrs else _no_warning()
    with expect, H5Split(path, HYKO2) as sp:
        assert sp.n_channels == HYKO2.n_bands and sp.feature_dim is None
        assert sp.read(0)[0].shape == (4, 5, HYKO2.n_bands)


class _no_warning:  # noqa: N801 - a tiny context manager used like pytest.warns
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def test_a_truncated_file_in_the_generated_cache_says_delete_the_entry(tmp_path: Path) -> None:
    folder = gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY)
    victim = folder / HYKO2.file_name("train")
    data = victim.read_bytes()
    victim.write_bytes(data[:2048])
    with pytest.raises(DataValidationError) as info:
        H5Split(victim, HYKO2)
    msg = str(info.value)
    assert f"delete the cache entry {folder}" in msg and "copy or convert it again" not in msg


def test_a_damaged_cache_entry_is_generated_again(tmp_path: Path, capsys) -> None:
    folder = gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY)
    victim = folder / HYKO2.file_name("val")
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    assert gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY) == folder
    assert victim.read_bytes() == good and "is damaged" in capsys.readouterr().err
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_an_entry_from_before_sizes_were_recorded_is_still_used_when_it_opens(tmp_path: Path) -> None:
    folder = gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY)
    marker = folder / "COMPLETE.json"
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: v for k, v in meta.items() if k != "sizes"}))
    stamp = (folder / HYKO2.file_name("train")).stat().st_mtime_ns
    assert gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY) == folder
    assert (folder / HYKO2.file_name("train")).stat().st_mtime_ns == stamp  # not regenerated
    (folder / HYKO2.file_name("test")).write_bytes(b"junk")
    gen.ensure_default_dataset(HYKO2, cache_dir=tmp_path, config=TINY)
    assert h5py.is_hdf5(folder / HYKO2.file_name("test"))
