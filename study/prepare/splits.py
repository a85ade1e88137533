"""The split lists: which raw sample goes into which split file.

The HS3-Bench lists ship as package data in ``study/splits/`` (origin note and
MIT notice there); ``--splits DIR`` replaces them with a user's own
``{train,val,test}_samples.csv``. Why checked here: a duplicate or a sample in
two splits would leak test images into training, and the reader would only
notice after hours of conversion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from study.prepare.readers import PrepareError

SPLITS: tuple[str, ...] = ("train", "val", "test")
HCV2_SPLITS: tuple[str, ...] = ("new", "old")
#: (dataset, hcv2 split) -> folder of study/splits
_PACKAGED = {("hyko2", None): "hyko2", ("hsidrive", None): "hsidrive", ("hcv2", "new"): "hcv2",
             ("hcv2", "old"): "hcv2_old"}


@dataclass(frozen=True)
class SplitLists:
    """Sample entries per split (file names as the release names them), and where they came from."""

    entries: dict[str, tuple[str, ...]]
    origin: str

    def digest(self, split: str) -> str:
        """Content hash of one split's sorted entries: a resumed or re-run split must use the same list."""
        return hashlib.sha256("\n".join(sorted(self.entries[split])).encode()).hexdigest()[:16]


def packaged_dir(dataset: str, hcv2_split: str | None = None) -> Path:
    """Folder of the shipped lists for ``dataset`` (``hcv2_split`` picks HCV2's new or old split)."""
    key = (dataset, hcv2_split if dataset == "hcv2" else None)
    if key not in _PACKAGED:
        raise PrepareError(f"no packaged split lists for {dataset!r} (hcv2 split {hcv2_split!r})")
    return Path(str(resources.files("study") / "splits" / _PACKAGED[key]))


def read_list(path: Path) -> tuple[str, ...]:
    """One entry per line (first comma-separated field), no header; blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PrepareError(f"{path}: cannot read the split list ({exc})") from exc
    names = tuple(line.split(",")[0].strip() for line in text.splitlines() if line.strip())
    if not names:
        raise PrepareError(f"{path}: the split list is empty; it needs one sample name per line (no header)")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PrepareError(f"{path}: sample {name!r} is listed twice; every sample must appear once")
        seen.add(name)
    return names


def load_lists(dataset: str, splits_dir: Path | None = None, hcv2_split: str = "new") -> SplitLists:
    """The three lists of ``dataset``, from ``splits_dir`` or the packaged HS3-Bench ones; checked disjoint."""
    if splits_dir is None:
        folder = packaged_dir(dataset, hcv2_split)
        origin = f"HS3-Bench lists shipped with hsistudy (study/splits/{folder.name})"
    else:
        folder = Path(splits_dir)
        origin = f"user lists {folder.resolve()}"
        if not folder.is_dir():
            raise PrepareError(f"--splits {folder}: not a folder; it must hold {', '.join(_files())}")
        absent = [f for f in _files() if not (folder / f).is_file()]
        if absent:
            raise PrepareError(f"--splits {folder}: missing {', '.join(absent)}; the folder must hold "
                               f"{', '.join(_files())} (one sample name per line, no header)")
    entries = {s: read_list(folder / f"{s}_samples.csv") for s in SPLITS}
    owner: dict[str, str] = {}
    for split in SPLITS:
        for name in entries[split]:
            stem = sample_key(dataset, name)
            if stem in owner:
                raise PrepareError(f"{folder}: sample {name!r} is in both {owner[stem]}_samples.csv and "
                                   f"{split}_samples.csv; train, val and test must be disjoint")
            owner[stem] = split
    return SplitLists(entries=entries, origin=origin)


def _files() -> list[str]:
    return [f"{s}_samples.csv" for s in SPLITS]


def sample_key(dataset: str, entry: str) -> str:
    """The HDF5 group name of a list entry: the file stem (HyKo2 ``.mat``, HCV2 ``.hsd``), HSI-Drive as is."""
    if dataset == "hsidrive":
        return entry
    return Path(entry).stem if Path(entry).suffix.lower() in (".mat", ".hsd") else entry
