"""``python -m study.prepare``: raw HyKo2 / HSI-Drive v2 / HCV2 releases -> HS3-Bench HDF5 split files.

Writes ``<out>/<dataset>_{train,val,test}.h5`` in the layout ``study.data.h5reader``
reads (docs/reference.md §R4): one group per sample (sorted names), ``image`` (H, W, C)
float32 and ``labels`` (H, W) with the raw ids (the dataset spec remaps them),
root attributes ``wavelengths`` (the spec's band centres), ``dataset``, ``split``,
``split_lists``, ``split_digest`` and for HCV2 ``hcv2_split`` (new | old). ``--format pca`` (HCV2)
stores ``scores`` / ``coefficients`` / ``means`` instead of ``image`` and ``--storage-dtype`` float16 /
bfloat16 smaller numbers; such files record both (``storage_format``, ``storage_dtype``, see
:mod:`study.data.storage`).

Why in hsistudy: the study must run on exactly the benchmark's images and
splits; the original shell + script pipeline needs OpenCV, silently skips
missing samples and leaves half-written files when interrupted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from study.data.specs import get_spec
from study.data.storage import DTYPES, FORMATS, storage_attrs
from study.prepare.layout import check_layout
from study.prepare.readers import PrepareError
from study.prepare.sources import DATASETS, make_job, missing_files
from study.prepare.splits import HCV2_SPLITS, SPLITS, SplitLists, load_lists
from study.prepare.writer import DIGEST_ATTR, SplitResult, convert_split, worker_pool

__all__ = ["DATASETS", "DTYPES", "FORMATS", "HCV2_SPLITS", "PrepareError", "SplitResult", "check_storage", "prepare"]

#: at most this many missing-file messages in the one-line error
_SHOW_MISSING = 3


def prepare(dataset: str, raw: str | Path, out: str | Path, *, splits_dir: str | Path | None = None,
            hcv2_split: str = "new", workers: int = 1, fmt: str = "cube", storage_dtype: str = "float32",
            stream: TextIO | None = None, on_split: Callable[[SplitResult], None] | None = None) -> list[SplitResult]:
    """Convert every split of ``dataset`` from the release folder ``raw`` into ``out``; finished splits are kept.

    ``fmt`` pca (HCV2 only) keeps each image as the release's PCA scores (halved like the cube), coefficients
    and means instead of the decoded cube; ``storage_dtype`` is the dtype of the cubes or scores
    (:mod:`study.data.storage`). Cube + float32 writes the files as before these options.

    Everything is checked before the first image is decoded: the lists, the
    release layout and that every listed sample's files exist. ``on_split`` is
    called as each split finishes (the CLI prints its summary line then).
    """
    if dataset not in DATASETS:
        raise PrepareError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if hcv2_split not in HCV2_SPLITS:
        raise PrepareError(f"--hcv2-split must be one of {', '.join(HCV2_SPLITS)}, got {hcv2_split!r}")
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {workers}")
    check_storage(dataset, fmt, storage_dtype)
    spec = get_spec(dataset)
    raw, out = Path(raw).expanduser(), Path(out).expanduser()
    lists = load_lists(dataset, None if splits_dir is None else Path(splits_dir), hcv2_split)
    check_layout(dataset, raw, [e for s in SPLITS for e in lists.entries[s]],
                 needs_test=dataset == "hcv2" and hcv2_split == "new")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out}: is a file; it must be a folder (created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    jobs = {s: [make_job(dataset, raw, s, e, hcv2_split, fmt) for e in lists.entries[s]] for s in SPLITS}
    pending = [s for s in SPLITS if not (out / spec.file_name(s)).exists()]
    problems = [m for s in pending for j in jobs[s] for m in missing_files(j, s)]
    if problems:
        n_listed = sum(len(jobs[s]) for s in pending)
        raise PrepareError(f"{len(problems)} raw file(s) of the {n_listed} listed samples not found ("
                           f"lists: {lists.origin}); " + "; ".join(problems[:_SHOW_MISSING])
                           + ("; ..." if len(problems) > _SHOW_MISSING else ""))
    results = []
    pool = worker_pool(workers) if pending else None
    interrupted = False
    try:
        for split in SPLITS:
            results.append(convert_split(split, jobs[split], out / spec.file_name(split),
                                         _attrs(dataset, split, lists, raw, hcv2_split)
                                         | storage_attrs(fmt, storage_dtype), pool=pool,
                                         window=2 * workers, stream=stream))
            if on_split is not None:
                on_split(results[-1])
    except KeyboardInterrupt:
        interrupted = True  # do not wait for the images being decoded: their results would be thrown away
        raise
    finally:
        if pool is not None:
            if interrupted:  # killed workers: the pool fails their futures itself and shuts down at once
                _stop_workers(pool)
            pool.shutdown(cancel_futures=not interrupted)
    return results


def check_storage(dataset: str, fmt: str, storage_dtype: str) -> None:
    """``--format`` / ``--storage-dtype`` valid for ``dataset``, else one line saying which and why."""
    if fmt not in FORMATS:
        raise PrepareError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if storage_dtype not in DTYPES:
        raise PrepareError(f"--storage-dtype must be one of {', '.join(DTYPES)}, got {storage_dtype!r}")
    if fmt == "pca" and dataset != "hcv2":
        raise PrepareError(f"--format pca is for hcv2 only (its .hsd release is PCA-compressed); the {dataset} "
                           "release holds full cubes: use --format cube")


def _stop_workers(pool: Any) -> None:
    """End a decoding pool's workers now (on Ctrl+C / SIGTERM): an image being decoded would be thrown away."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # the stdlib's own table of them
        with contextlib.suppress(OSError, ValueError):
            proc.kill()


def _attrs(dataset: str, split: str, lists: SplitLists, raw: Path, hcv2_split: str) -> dict[str, Any]:
    """Root attributes of a split file: band centres for the reader, provenance for the study."""
    spec = get_spec(dataset)
    attrs: dict[str, Any] = {
        "wavelengths": spec.wavelength_array(), "dataset": dataset, "split": split,
        "made_by": "hsistudy python -m study.prepare", "split_lists": lists.origin,
        DIGEST_ATTR: lists.digest(split), "raw_root": str(raw.resolve()),
    }
    if dataset == "hcv2":
        attrs["hcv2_split"] = hcv2_split
        attrs["resize"] = "x0.5 nearest neighbour, OpenCV INTER_NEAREST size and sample positions"
    return attrs

