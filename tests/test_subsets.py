"""Nested data-efficiency subsets: sizes, nesting, class cover, determinism, hash, manifest files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study.data.subsets import (
    SubsetManifest,
    content_hash,
    make_subset,
    parse_fractions,
    subset_order,
    subset_size,
)
from study.errors import ConfigError


def fake_split(n: int, n_classes: int = 10, seed: int = 0) -> tuple[list[str], list[frozenset[int]]]:
    """``n`` images; common classes appear often, class ``n_classes - 1`` in one image only."""
    rng = np.random.default_rng(seed)
    names = [f"img_{i:04d}" for i in range(n)]
    classes = []
    for _ in range(n):
        common = rng.choice(n_classes - 1, size=rng.integers(1, 4), replace=False)
        classes.append(frozenset(int(c) for c in common))
    rare_at = int(rng.integers(n))
    classes[rare_at] = classes[rare_at] | {n_classes - 1}
    return names, classes


@pytest.mark.parametrize(("fraction", "k"), [(0.01, 1), (0.02, 2), (0.05, 4), (0.1, 8), (0.2, 16),
                                             (0.25, 20), (0.5, 40), (1.0, 81)])
def test_subset_size_hyko2_table(fraction: float, k: int) -> None:
    assert subset_size(fraction, 81) == k  # docs/reference.md §R19


@pytest.mark.parametrize(("n", "fractions", "ks"), [(451, (0.01, 0.05, 0.25, 0.5), (5, 23, 113, 226)),
                                                    (949, (0.01, 0.02, 0.25), (9, 19, 237))])
def test_subset_size_other_tables(n: int, fractions: tuple[float, ...], ks: tuple[int, ...]) -> None:
    assert tuple(subset_size(f, n) for f in fractions) == ks


def test_subset_size_rounds_half_to_even_and_never_zero() -> None:
    assert subset_size(0.5, 5) == 2  # round(2.5) == 2
    assert subset_size(0.5, 7) == 4  # round(3.5) == 4
    assert subset_size(0.001, 10) == 1


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, math.nan, math.inf, True, "0.5"])
def test_subset_size_rejects_bad_fractions(bad: object) -> None:
    with pytest.raises(ConfigError, match="0 < f <= 1"):
        subset_size(bad, 10)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 120),
    seed=st.integers(0, 2**32 - 1),
    fractions=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=6),
)
def test_subsets_are_nested(n: int, seed: int, fractions: list[float]) -> None:
    names, classes = fake_split(n, seed=seed % 1000)
    subsets = [make_subset("hyko2", names, classes, f, seed) for f in sorted(fractions)]
    for small, big in zip(subsets, subsets[1:], strict=False):
        assert set(small.names) <= set(big.names)
        assert big.names[: len(small.names)] == small.names
    for m in subsets:
        assert len(m.names) == subset_size(m.fraction, n) >= 1
        assert m.n_total == n and len(set(m.names)) == len(m.names)


@pytest.mark.parametrize("seed", range(8))
def test_every_class_is_covered_once_k_allows(seed: int) -> None:
    names, classes = fake_split(81, n_classes=11, seed=seed)
    all_classes = set().union(*classes)
    order = subset_order(names, classes, seed)
    lookup = dict(zip(names, classes, strict=True))
    # the smallest prefix that covers all classes; a greedy cover of 11 classes needs far fewer than 81
    prefix = next(k for k in range(1, 82) if set().union(*(lookup[n] for n in order[:k])) == all_classes)
    assert prefix <= len(all_classes)
    for f in (0.05, 0.1, 0.25, 0.5, 1.0):
        m = make_subset("hyko2", names, classes, f, seed)
        if len(m.names) >= prefix:
            assert set(m.classes_covered) == all_classes
        assert set(m.classes_covered) == set().union(*(lookup[n] for n in m.names))


def test_rare_class_enters_the_first_images() -> None:
    names = [f"n{i}" for i in range(50)]
    classes = [frozenset({0, 1}) for _ in names]
    classes[37] = frozenset({0, 1, 2})  # the only image with class 2
    m = make_subset("hyko2", names, classes, 0.02, subset_seed=5)
    assert m.names == ("n37",) and m.classes_covered == (0, 1, 2)


def test_order_is_deterministic_and_independent_of_input_order() -> None:
    names, classes = fake_split(40)
    a = subset_order(names, classes, 3)
    assert a == subset_order(names, classes, 3)
    assert a == subset_order(names[::-1], classes[::-1], 3)
    assert sorted(a) == sorted(names)
    assert a != subset_order(names, classes, 4)
    halves = [make_subset("hyko2", names, classes, 0.5, seed).names for seed in (3, 4)]
    assert halves[0] != halves[1]


def test_images_without_classes_follow_the_permutation() -> None:
    names = [f"x{i}" for i in range(10)]
    order = subset_order(names, [frozenset()] * 10, 7)
    assert order == [names[i] for i in np.random.default_rng(7).permutation(10)]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="one set per image"):
        subset_order(["a", "b"], [frozenset()], 0)
    with pytest.raises(ValueError, match="unique"):
        subset_order(["a", "a"], [frozenset(), frozenset()], 0)
    with pytest.raises(ConfigError):
        make_subset("hyko2", [], [], 0.5, 0)


def test_content_hash_is_stable_and_tracks_inputs() -> None:
    names, classes = fake_split(30)
    m = make_subset("hyko2", names, classes, 0.25, 1)
    payload = {"dataset": "hyko2", "fraction": 0.25, "names": sorted(m.names), "subset_seed": 1}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert m.content_hash == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert len(m.content_hash) == 16
    assert content_hash("hyko2", list(reversed(m.names)), 1, 0.25) == m.content_hash
    assert content_hash("hyko2", m.names[:-1], 1, 0.25) != m.content_hash
    assert content_hash("hsidrive", m.names, 1, 0.25) != m.content_hash
    assert content_hash("hyko2", m.names, 2, 0.25) != m.content_hash
    assert make_subset("hyko2", names, classes, 0.25, 1).content_hash == m.content_hash


def test_manifest_round_trip_and_atomic_write(tmp_path: Path) -> None:
    names, classes = fake_split(30)
    m = make_subset("hyko2", names, classes, 0.1, 9)
    assert SubsetManifest.from_json(m.to_json()) == m
    out = m.write(tmp_path / "manifests" / "m.json")
    assert SubsetManifest.from_json(out.read_text()) == m
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # no temp file left behind
    edited = json.loads(m.to_json())
    edited["names"] = edited["names"][:-1] + ["intruder"]
    with pytest.raises(ConfigError, match="does not match"):
        SubsetManifest.from_json(json.dumps(edited))
    with pytest.raises(ConfigError, match="not a subset manifest"):
        SubsetManifest.from_json("{}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.01,0.05,1", (0.01, 0.05, 1.0)), ("1, 0.5 ,0.1", (0.1, 0.5, 1.0)), ("5%,100%", (0.05, 1.0)),
     ("12.5%,0.25", (0.125, 0.25))],
)
def test_parse_fractions(text: str, expected: tuple[float, ...]) -> None:
    assert parse_fractions(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "empty"), ("  ", "empty"), ("0.1,,0.5", "empty entry"), ("0.1,abc", "'abc' is not a number"),
     ("0.5,50%", "'50%' repeats '0.5'"), ("0.1,0.1", "'0.1' repeats"), ("0,0.5", "'0' is outside"),
     ("5", "did you mean 5%"), ("150%", "'150%' is outside"), ("nan", "'nan' is outside"),
     ("-0.1", "outside")],
)
def test_parse_fractions_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fractions(text)
    assert needle in str(info.value)
