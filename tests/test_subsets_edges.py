"""Edges of the subset rule that mutation testing found unpinned (issue 29, docs/testing.md).

The greedy cover's three keys in order (new classes, then the rarest class, then the permutation position),
the content hash as literal bytes (non-ASCII names escaped), the manifest file's exact text, and every error
message word for word.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from matching import whole

from study.data.subsets import (
    SubsetManifest,
    content_hash,
    greedy_cover,
    make_subset,
    parse_fractions,
    subset_order,
    subset_size,
)
from study.errors import ConfigError


def _freq(classes: dict[str, frozenset[int]]) -> dict[int, int]:
    freq: dict[int, int] = {}
    for cs in classes.values():
        for c in cs:
            freq[c] = freq.get(c, 0) + 1
    return freq


def test_cover_prefers_more_new_classes_over_a_rarer_one() -> None:
    classes = {"rare": frozenset({9}), "wide": frozenset({0, 1, 2}), "a": frozenset({0}), "b": frozenset({1})}
    assert greedy_cover(["rare", "a", "b", "wide"], classes, _freq(classes)) == ["wide", "rare"]


def test_cover_breaks_a_tie_on_new_classes_by_the_rarest_class() -> None:
    # "x" and "y" each add one class; class 1 (in "y") is in one image, class 0 in three
    classes = {"x": frozenset({0}), "y": frozenset({1}), "z1": frozenset({0}), "z2": frozenset({0})}
    assert greedy_cover(["x", "z1", "z2", "y"], classes, _freq(classes)) == ["y", "x"]
    # the rarest of the new classes counts, not the commonest: "p" holds class 5 (one image) and class 0
    # (four), "q" classes 6 and 1 (two each)
    classes = {"p": frozenset({5, 0}), "q": frozenset({6, 1}), "r": frozenset({6}), "t": frozenset({1}),
               "s1": frozenset({0}), "s2": frozenset({0}), "s3": frozenset({0})}
    assert greedy_cover(["q", "r", "t", "s1", "s2", "s3", "p"], classes, _freq(classes))[:2] == ["p", "q"]


def test_cover_breaks_a_full_tie_by_the_permutation_position() -> None:
    classes = {"m": frozenset({0}), "n": frozenset({1}), "o": frozenset({2})}
    assert greedy_cover(["n", "o", "m"], classes, _freq(classes)) == ["n", "o", "m"]
    assert greedy_cover(["o", "m", "n"], classes, _freq(classes)) == ["o", "m", "n"]


def test_cover_counts_only_still_uncovered_classes() -> None:
    # after "ab" is picked, "abc" adds one class and "de" two: "de" comes next
    classes = {"ab": frozenset({0, 1, 7, 8}), "abc": frozenset({0, 1, 2}), "de": frozenset({3, 4})}
    assert greedy_cover(["abc", "de", "ab"], classes, _freq(classes)) == ["ab", "de", "abc"]


def test_subset_order_is_cover_then_permutation() -> None:
    names = [f"s{i}" for i in range(8)]
    classes = [frozenset({0})] * 8
    classes[5] = frozenset({0, 1})  # the only image with class 1: it covers everything alone
    perm = np.random.default_rng(11).permutation(8)
    expected = ["s5"] + [names[i] for i in perm if i != 5]
    assert subset_order(names, classes, 11) == expected


def test_content_hash_of_literal_bytes() -> None:
    text = '{"dataset":"hyko2","fraction":0.5,"names":["a","b\\u00fc"],"subset_seed":3}'
    expected = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    assert content_hash("hyko2", ["b\u00fc", "a"], 3, 0.5) == expected


def test_manifest_file_text_is_fixed() -> None:
    m = make_subset("hyko2", ["b", "a", "c"], [frozenset({1}), frozenset({0}), frozenset({0})], 0.5, 2)
    d = json.loads(m.to_json())
    assert m.to_json() == json.dumps(d, indent=1, sort_keys=True)
    assert m.to_json().splitlines()[:3] == ["{", ' "classes_covered": [', "  0,"]
    assert SubsetManifest.from_json(m.to_json()) == m
    del d["method"]  # manifests written before the paper protocol existed
    d["content_hash"] = m.content_hash
    assert SubsetManifest.from_json(json.dumps(d)).method == "cover"


def test_manifest_errors_word_for_word() -> None:
    with pytest.raises(ConfigError, match=whole("not a subset manifest (KeyError: 'dataset')")):
        SubsetManifest.from_json("{}")
    m = make_subset("hyko2", ["a", "b"], [frozenset({0}), frozenset({1})], 1.0, 0)
    d = json.loads(m.to_json())
    d["content_hash"] = "0" * 16
    with pytest.raises(ConfigError, match=whole(
            f"subset manifest hash {'0' * 16} does not match its contents ({m.content_hash}); the file was "
            "edited - re-create it instead")):
        SubsetManifest.from_json(json.dumps(d))


def test_subset_size_errors_word_for_word() -> None:
    with pytest.raises(ConfigError, match=whole("fraction must be a number with 0 < f <= 1, got '0.5'")):
        subset_size("0.5", 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=whole("fraction must satisfy 0 < f <= 1, got 5; write 5% as 0.05")):
        subset_size(5, 10)
    with pytest.raises(ConfigError, match=whole("the training split has 0 images; a subset needs at least one")):
        subset_size(0.5, 0)
    assert subset_size(1, 1) == 1 and subset_size(1.0, 81) == 81


def test_input_and_method_errors_word_for_word() -> None:
    with pytest.raises(ValueError, match=whole("2 names but 1 class sets; give one set per image")):
        subset_order(["a", "b"], [frozenset()], 0)
    with pytest.raises(ValueError, match=whole("image names must be unique")):
        make_subset("hyko2", ["a", "a"], [frozenset(), frozenset()], 0.5, 0)
    with pytest.raises(ValueError, match=whole("subset method must be one of ('cover', 'paper'), got 'Paper'")):
        make_subset("hyko2", ["a"], [frozenset()], 1.0, 0, method="Paper")


def test_paper_subsets_use_seed_42_whatever_seed_is_given() -> None:
    names = [f"p{i}" for i in range(20)]
    classes = [frozenset({i % 3}) for i in range(20)]
    m = make_subset("hyko2", names, classes, 0.25, 7, method="paper")
    assert m.subset_seed == 42 and m.method == "paper"
    assert m.content_hash == content_hash("hyko2", m.names, 42, 0.25)
    lookup = dict(zip(names, classes, strict=True))
    assert m.classes_covered == tuple(sorted(set().union(*(lookup[n] for n in m.names))))


@pytest.mark.parametrize(("text", "message"), [
    ("", "--fractions is empty; give e.g. 0.01,0.05,0.1,1.0 or 1%,5%,100%"),
    ("0.1,,0.5", "--fractions '0.1,,0.5' has an empty entry; separate values by single commas"),
    ("0.1,abc", "--fractions: 'abc' is not a number; use e.g. 0.05 or 5%"),
    ("5", "--fractions: '5' is outside the rule 0 < f <= 1 (did you mean 5%?)"),
    ("100", "--fractions: '100' is outside the rule 0 < f <= 1 (did you mean 100%?)"),
    ("101", "--fractions: '101' is outside the rule 0 < f <= 1"),
    ("150%", "--fractions: '150%' is outside the rule 0 < f <= 1"),
    ("0", "--fractions: '0' is outside the rule 0 < f <= 1"),
    ("inf", "--fractions: 'inf' is outside the rule 0 < f <= 1"),
    ("0.5,50%", "--fractions: '50%' repeats '0.5'; list each fraction once"),
])
def test_parse_fractions_errors_word_for_word(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=whole(message)):
        parse_fractions(text)


def test_parse_fractions_keeps_one_and_strips_spaces() -> None:
    assert parse_fractions(" 1 ") == (1.0,)
    assert parse_fractions("100%, 1%") == (0.01, 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_the_cover_counts_each_class_over_the_whole_split(seed: int) -> None:
    """Class 1 is in one image, class 0 in three: whatever the permutation, the rare image opens the order."""
    names = ["a", "b", "c", "d"]
    order = subset_order(names, [frozenset({0}), frozenset({1}), frozenset({0}), frozenset({0})], seed)
    assert order[0] == "b"


def test_a_paper_manifest_reads_back_as_paper() -> None:
    m = make_subset("hyko2", [f"p{i}" for i in range(10)], [frozenset({0})] * 10, 0.5, 0, method="paper")
    assert SubsetManifest.from_json(m.to_json()).method == "paper"


def test_a_fraction_just_above_one_suggests_a_percentage() -> None:
    with pytest.raises(ConfigError, match=whole("--fractions: '1.5' is outside the rule 0 < f <= 1 (did you mean "
                                                 "1.5%?)")):
        parse_fractions("1.5")
