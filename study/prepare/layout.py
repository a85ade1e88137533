"""Is ``--raw`` the release folder? If not, say what belongs there and where it probably is.

Why: pointing at the folder one level too high (the download folder) or too
deep (``train/``, ``cubes_fl32/``) is the most common slip, and "file not
found" for the first of 1,330 samples does not tell the user that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from study.prepare.readers import PrepareError

EXPECTED: dict[str, str] = {
    "hyko2": "the HyKo2-VIS .mat files named in the split lists (e.g. set-_04282_spec_annotated.mat, as "
             "vis_annotated.zip extracts them)",
    "hsidrive": "the folders cubes_fl32/ (<name>_TC.mat) and labels/ (<name>.png), i.e. HSI-Drive v2's "
                "Image_dataset folder",
    "hcv2": "the folder train/ (the .hsd files of V2_train_image.rar, with gt/ from V2_fixed_train_label.zip)"
            "{test}",
}
_HCV2_TEST = (" and the folder test/ (V2_test_image.rar with gt/ from V2_fixed_test_label.zip; the new split's "
              "test images)")


def _marker(dataset: str, entries: Iterable[str], needs_test: bool) -> Callable[[Path], bool]:
    """Predicate: does a folder look like the release root of ``dataset``?"""
    if dataset == "hyko2":
        files = [e if e.lower().endswith(".mat") else e + ".mat" for e in entries]
        return lambda d: any((d / f).is_file() for f in files)
    if dataset == "hsidrive":
        return lambda d: (d / "cubes_fl32").is_dir() and (d / "labels").is_dir()
    return lambda d: (d / "train").is_dir() and (not needs_test or (d / "test").is_dir())


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []


def check_layout(dataset: str, raw: Path, entries: Iterable[str], needs_test: bool = True) -> None:
    """Raise a :class:`PrepareError` that explains the expected layout unless ``raw`` matches it."""
    if not raw.is_dir():
        what = "is a file" if raw.exists() else "does not exist"
        raise PrepareError(f"--raw {raw}: {what}; it must be the {dataset} release folder holding "
                           f"{_expected(dataset, needs_test)}")
    looks_right = _marker(dataset, entries, needs_test)
    if looks_right(raw):
        return
    below = [d for d in _subdirs(raw) if looks_right(d)]
    above = [raw.parent] if raw.parent != raw and looks_right(raw.parent) else []
    try:
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in raw.iterdir())
    except OSError:
        held = []
    shown = (", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")) if held else "nothing"
    hint = ""
    if below or above:
        hint = f" Did you mean --raw {(below or above)[0]}?"
    raise PrepareError(f"--raw {raw}: not the {dataset} release folder: expected {_expected(dataset, needs_test)} "
                       f"in it, but it holds {shown}.{hint}")


def _expected(dataset: str, needs_test: bool) -> str:
    return EXPECTED[dataset].format(test=_HCV2_TEST if needs_test else "")
