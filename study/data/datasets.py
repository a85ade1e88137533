"""A dataset's split files, opened once per process and validated together.

Loaders, trials and the study-input checks all ask for a split through :func:`open_split`, so one
process holds one handle per file (reopened when the file changed); :func:`validate_dataset` checks
every value of every split once and that the splits agree (one band set, disjoint samples).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from study.data.h5checks import SPLIT_LAYOUT, expected_files
from study.data.h5reader import H5Split, split_path
from study.data.specs import DatasetSpec
from study.errors import DataValidationError

#: per-process cache: (absolute path, dataset) -> (split, (inode, mtime_ns, size) when opened)
_OPEN: dict[tuple[str, str], tuple[H5Split, tuple[int, ...] | None]] = {}


def _stamp(path: Path) -> tuple[int, ...] | None:
    st = path.stat() if path.is_file() else None
    return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)


def open_split(root: str | Path, spec: DatasetSpec, split: str, *, check_values: bool = False,
               allow_extreme: bool = False) -> H5Split:
    """The split's :class:`H5Split`, opened once per process and reused (reopened if the file changed)."""
    path = split_path(root, spec, split).absolute()
    key, stamp = (str(path), spec.name), _stamp(path)
    hit = _OPEN.get(key)
    if hit is not None and hit[1] == stamp and hit[0].spec == spec:
        if check_values:
            hit[0].validate_values(allow_extreme)
        return hit[0]
    opened = H5Split(path, spec, check_values=check_values, allow_extreme=allow_extreme)
    _OPEN[key] = (opened, stamp)
    return opened


def close_all() -> None:
    """Close and forget every cached split of this process (tests, or before rewriting files)."""
    for opened, _ in _OPEN.values():
        opened.close()
    _OPEN.clear()


def validate_dataset(root: str | Path, spec: DatasetSpec, allow_extreme: bool = False) -> dict[str, H5Split]:
    """Open every split with full value checks; require one band set and disjoint splits. A value beyond
    :data:`MAX_ABS_VALUE` is refused, or, with ``allow_extreme``, left in the split's ``extreme`` note."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(
            f"data folder {root} does not exist or is not a folder; "
            f"it must hold {expected_files(spec)} ({SPLIT_LAYOUT})"
        )
    splits = {s: open_split(root, spec, s, check_values=True, allow_extreme=allow_extreme) for s in spec.splits}
    check_splits_agree(splits, splits[spec.splits[0]])
    return splits


def check_splits_agree(splits: dict[str, H5Split], first: H5Split) -> None:
    """All splits of a dataset share ``first``'s band set, and no sample is in two of them."""
    for sp in splits.values():
        wl, wl0 = sp.wavelengths, first.wavelengths
        if wl.shape != wl0.shape or not np.allclose(wl, wl0):
            raise DataValidationError(
                f"{sp.path}: its {sp.wavelengths.size} wavelengths ({sp.wavelength_source}) differ from "
                f"{first.path}'s {first.wavelengths.size} ({first.wavelength_source}); all splits of a "
                "dataset must share one band set"
            )
    seen: dict[str, H5Split] = {}
    for sp in splits.values():  # a sample in two splits leaks test data into training or selection
        for name in sp.names:
            other = seen.setdefault(name, sp)
            if other is not sp:
                raise DataValidationError(
                    f"{sp.path}: sample {name!r} is also in {other.path}; train, val and test must be disjoint "
                    "(fix the split lists the files were made from)"
                )
