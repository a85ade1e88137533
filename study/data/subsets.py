"""Nested data-efficiency subsets of the TRAINING split's images (never pixels).

The rule, for one ``subset_seed`` (val and test always stay complete):

1. Sort the train image names (HDF5 key order) and take
   ``numpy.random.default_rng(subset_seed).permutation(N)`` over them.
2. Greedy class cover: repeatedly pick, among the images not yet picked, the one
   that adds the most still-uncovered classes; ties go to the image whose new
   classes include the rarest class (fewest train images contain it), then to
   the earlier image in the permutation. Stop when every class present in the
   full train split is covered. These images form the *cover prefix*.
3. The ordering is the cover prefix followed by the remaining images in
   permutation order.
4. The subset for fraction ``f`` is the first ``k`` images of that ordering, with
   ``k = max(1, round(f * N))`` - Python's ``round`` (half to even), as the
   paper's ``train_x_percent`` code does (docs/reference.md §R19).

``method="paper"`` (``--protocol paper``) instead draws exactly as HS3-Bench does
(docs/reference.md §R19): the first ``k`` of ``torch.randperm(N, generator=
torch.Generator().manual_seed(42))`` over the sorted names (:func:`paper_order`),
prefixes of one permutation, so nested too, with no class-cover guarantee.

Why: every fraction is a prefix of one ordering, so subsets are nested (the 5 %
subset lies inside the 10 % one) and a curve over fractions measures added
labels, not a re-drawn sample. The cover prefix makes every class of the full
train split appear as soon as ``k >= len(cover prefix)``, so small fractions do
not silently drop a class from training. This deliberately differs from the
paper's ``random_split(seed 42)`` prefix, which has neither guarantee; the
subset sizes are the same.

``content_hash`` = first 16 hex digits of the SHA-256 of the UTF-8 bytes of
``json.dumps({"dataset": str, "fraction": float, "names": sorted(names),
"subset_seed": int}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.
It identifies the images actually used; every result row carries it.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from study.errors import ConfigError


def subset_size(fraction: float, n_total: int) -> int:
    """Images in the subset: ``max(1, round(fraction * n_total))`` (round half to even)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not math.isfinite(fraction):
        raise ConfigError(f"fraction must be a number with 0 < f <= 1, got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must satisfy 0 < f <= 1, got {fraction!r}; write 5% as 0.05")
    if n_total < 1:
        raise ConfigError(f"the training split has {n_total} images; a subset needs at least one")
    return min(n_total, max(1, int(round(float(fraction) * n_total))))


def _check_inputs(names: Sequence[str], classes_present: Sequence[frozenset[int]]) -> None:
    if len(names) != len(classes_present):
        raise ValueError(f"{len(names)} names but {len(classes_present)} class sets; give one set per image")
    if len(set(names)) != len(names):
        raise ValueError("image names must be unique")


def greedy_cover(
    perm_names: list[str], classes: dict[str, frozenset[int]], freq: dict[int, int]
) -> list[str]:
    """Images (in pick order) that together hold every class; see the module docstring."""
    uncovered = set().union(*classes.values()) if classes else set()
    picked: list[str] = []
    remaining = list(perm_names)
    while uncovered:
        best, best_key = None, None
        for pos, name in enumerate(remaining):
            new = classes[name] & uncovered
            if not new:
                continue
            key = (len(new), -min(freq[c] for c in new), -pos)
            if best_key is None or key > best_key:
                best, best_key = pos, key
        if best is None:  # unreachable: every uncovered class occurs in some image
            break
        name = remaining.pop(best)
        picked.append(name)
        uncovered -= classes[name]
    return picked


def subset_order(
    names: Sequence[str], classes_present: Sequence[frozenset[int]], subset_seed: int
) -> list[str]:
    """The one ordering of all train images for ``subset_seed``; every subset is a prefix of it."""
    _check_inputs(names, classes_present)
    classes = {n: frozenset(c) for n, c in zip(names, classes_present, strict=True)}
    ordered = sorted(names)
    perm = np.random.default_rng(subset_seed).permutation(len(ordered))
    perm_names = [ordered[i] for i in perm]
    freq: dict[int, int] = {}
    for cs in classes.values():
        for c in cs:
            freq[c] = freq.get(c, 0) + 1
    cover = greedy_cover(perm_names, classes, freq)
    chosen = set(cover)
    return cover + [n for n in perm_names if n not in chosen]


def content_hash(dataset: str, names: Sequence[str], subset_seed: int, fraction: float) -> str:
    """sha256 hex[:16] of the canonical JSON described in the module docstring."""
    payload = {
        "dataset": dataset,
        "fraction": float(fraction),
        "names": sorted(names),
        "subset_seed": int(subset_seed),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SubsetManifest:
    """Which train images a (dataset, fraction, subset_seed) cell uses; ``names`` in subset order."""

    dataset: str
    fraction: float
    subset_seed: int
    names: tuple[str, ...]
    n_total: int
    content_hash: str
    classes_covered: tuple[int, ...]
    method: str = "cover"  # "cover" (this module's rule) or "paper" (HS3-Bench's seed-42 randperm prefix)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SubsetManifest:
        """Parse a manifest; a hash that does not match its names means the file was edited."""
        try:
            d = json.loads(text)
            m = cls(
                dataset=str(d["dataset"]),
                fraction=float(d["fraction"]),
                subset_seed=int(d["subset_seed"]),
                names=tuple(str(n) for n in d["names"]),
                n_total=int(d["n_total"]),
                content_hash=str(d["content_hash"]),
                classes_covered=tuple(int(c) for c in d["classes_covered"]),
                method=str(d.get("method", "cover")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a subset manifest ({type(exc).__name__}: {exc})") from None
        expected = content_hash(m.dataset, m.names, m.subset_seed, m.fraction)
        if expected != m.content_hash:
            raise ConfigError(
                f"subset manifest hash {m.content_hash} does not match its contents ({expected}); "
                "the file was edited - re-create it instead"
            )
        return m

    def write(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half a manifest."""
        from study.store import atomic_write_text

        return atomic_write_text(Path(path), self.to_json())


PAPER_SEED = 42
SUBSET_METHODS = ("cover", "paper")


def paper_order(names: Sequence[str]) -> list[str]:
    """HS3-Bench's draw: ``torch.randperm(N, generator=Generator().manual_seed(42))`` over the sorted names
    (``random_split`` with that generator takes the same prefix)."""
    import torch

    ordered = sorted(names)
    perm = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(PAPER_SEED)).tolist()
    return [ordered[i] for i in perm]


def make_subset(
    dataset: str,
    names: Sequence[str],
    classes_present: Sequence[frozenset[int]],
    fraction: float,
    subset_seed: int,
    method: str = "cover",
) -> SubsetManifest:
    """The manifest of the first ``subset_size(fraction, N)`` images of :func:`subset_order` (``cover``) or of
    :func:`paper_order` (``paper``: ``subset_seed`` is then the benchmark's 42)."""
    if method not in SUBSET_METHODS:
        raise ValueError(f"subset method must be one of {SUBSET_METHODS}, got {method!r}")
    _check_inputs(names, classes_present)
    k = subset_size(fraction, len(names))
    if method == "paper":
        subset_seed = PAPER_SEED
        chosen = paper_order(names)[:k]
    else:
        chosen = subset_order(names, classes_present, subset_seed)[:k]
    classes = dict(zip(names, classes_present, strict=True))
    covered = sorted(set().union(*(classes[n] for n in chosen)))
    return SubsetManifest(
        dataset=dataset,
        fraction=float(fraction),
        subset_seed=int(subset_seed),
        names=tuple(chosen),
        n_total=len(names),
        content_hash=content_hash(dataset, chosen, subset_seed, fraction),
        classes_covered=tuple(int(c) for c in covered),
        method=method,
    )


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.01,0.05,1"`` or ``"1%,5%,100%"`` -> sorted unique fractions in (0, 1]."""
    tokens = [t.strip() for t in str(text).split(",")]
    if not any(tokens):
        raise ConfigError("--fractions is empty; give e.g. 0.01,0.05,0.1,1.0 or 1%,5%,100%")
    seen: dict[float, str] = {}
    for tok in tokens:
        if not tok:
            raise ConfigError(f"--fractions {text!r} has an empty entry; separate values by single commas")
        try:
            value = float(tok[:-1]) / 100.0 if tok.endswith("%") else float(tok)
        except ValueError:
            raise ConfigError(f"--fractions: {tok!r} is not a number; use e.g. 0.05 or 5%") from None
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            hint = f" (did you mean {tok}%?)" if not tok.endswith("%") and 1.0 < value <= 100.0 else ""
            raise ConfigError(f"--fractions: {tok!r} is outside the rule 0 < f <= 1{hint}")
        if value in seen:
            raise ConfigError(f"--fractions: {tok!r} repeats {seen[value]!r}; list each fraction once")
        seen[value] = tok
    return tuple(sorted(seen))
