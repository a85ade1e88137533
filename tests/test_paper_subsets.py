"""The paper protocol's subsets against HS3-Bench's own draw, whatever order the names arrive in.

The reference is computed here without the project's code (docs/reference.md §R19, §R4): the original
``cross-domain-hsi`` loader iterates ``list(h5py.File(f).keys())`` (without ``metadata``), which h5py
returns in name order, and takes ``torch.utils.data.random_split(range(N), [k, N - k],
generator=torch.Generator().manual_seed(42))[0]`` with ``k = round(p * N)``. So the subset is a function
of the *sorted* names: a split file written in another order, or a list handed over in file order,
must give the same images. The test names are chosen so that creation order != sorted order
(zero-padded, already sorted names would let any order pass).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from study.data.h5reader import H5Split
from study.data.specs import get_spec
from study.data.subsets import make_subset
from study.prepare.splits import load_lists, sample_key

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0)


def reference_subset(names: list[str], fraction: float) -> list[str]:
    """HS3-Bench's training subset: random_split(seed 42) over the HDF5 key order, i.e. the sorted names."""
    keys = sorted(names)
    n = len(keys)
    k = max(1, round(fraction * n))
    first, _ = torch.utils.data.random_split(range(n), [k, n - k], generator=torch.Generator().manual_seed(42))
    return [keys[i] for i in first.indices]


def _shuffled_names(n: int) -> list[str]:
    """Names whose creation order is neither sorted nor reverse-sorted, with unpadded numbers (b10 < b2)."""
    names = [f"{'abc'[i % 3]}{i}" for i in range(n)]
    order = np.random.default_rng(7).permutation(n)
    out = [names[i] for i in order]
    assert out != sorted(out) and out != sorted(out, reverse=True)
    return out


def _write_split(path: Path, names: list[str]) -> None:
    """A HyKo2-like split file, groups created in ``names`` order (creation order tracked) plus ``metadata``."""
    spec = get_spec("hyko2")
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", track_order=True) as fh:
        meta = fh.create_group("metadata")
        meta.create_dataset("min-val", data=0.0)
        meta.create_dataset("max-val", data=1.0)
        for i, name in enumerate(names):
            g = fh.create_group(name)
            g.create_dataset("image", data=rng.random((2, 3, spec.n_bands), dtype=np.float32))
            g.create_dataset("labels", data=np.full((2, 3), 1 + i % (spec.n_classes - 1), dtype=np.uint8))


def test_a_split_file_written_in_shuffled_order_gives_the_benchmarks_subsets(tmp_path: Path) -> None:
    names = _shuffled_names(23)
    path = tmp_path / "hyko2_train.h5"
    _write_split(path, names)
    with h5py.File(path, "r") as fh:  # the file really keeps the shuffled creation order
        assert [k for k in fh if k != "metadata"] == names
    split = H5Split(path, get_spec("hyko2"))
    try:
        assert split.names == sorted(names)  # metadata is no sample
        file_order = list(names)
        for fraction in FRACTIONS:
            expected = reference_subset(names, fraction)
            for given in (split.names, file_order, file_order[::-1]):
                classes = [frozenset({1}) for _ in given]
                m = make_subset("hyko2", given, classes, fraction, 0, method="paper")
                assert list(m.names) == expected, (fraction, given[:3])
    finally:
        split.close()


@pytest.mark.parametrize("dataset, hcv2_split, n_train", [("hyko2", "new", 81), ("hsidrive", "new", 451),
                                                          ("hcv2", "new", 949), ("hcv2", "old", 527)])
def test_the_real_split_lists_in_file_order_and_reversed(dataset: str, hcv2_split: str, n_train: int) -> None:
    """The shipped HS3-Bench lists (HyKo2's and HSI-Drive's unsorted in file order, HCV2's sorted) in file order
    and reversed: the subset must not care (docs/reference.md §R19)."""
    names = [sample_key(dataset, e) for e in load_lists(dataset, hcv2_split=hcv2_split).entries["train"]]
    assert len(names) == n_train and names[::-1] != sorted(names)
    classes = [frozenset({0}) for _ in names]
    for fraction in (0.01, 0.1, 0.5):
        expected = reference_subset(names, fraction)
        assert len(expected) == max(1, round(fraction * n_train))
        for given in (names, names[::-1]):
            assert list(make_subset(dataset, given, classes, fraction, 0, method="paper").names) == expected
