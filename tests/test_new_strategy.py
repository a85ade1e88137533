"""Adding a strategy touches one registry entry (+ its trainable and search space), nothing else.

The throwaway ``probe-fc`` below is registered in a fixture only, with a
setting of its own and a colour, and runs a smoke study and the report end to
end: no module outside the registry needs to know its name. A second test
checks the same promise statically: no module of the framework spells a
registered strategy's name.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from study import strategies
from study.strategies import BACKBONES, STRATEGIES, BackboneKind, Strategy

ROOT = Path(__file__).resolve().parents[1]
#: modules that must stay strategy-agnostic (the registry, the trainables and search spaces may name them)
AGNOSTIC = sorted(
    [str(p.relative_to(ROOT)) for pkg in ("orchestration", "search", "store", "report", "config", "features")
     for p in (ROOT / "study" / pkg).glob("*.py")] + ["study/run.py", "study/api.py", "study/progress.py"])


@pytest.fixture
def probe_fc(monkeypatch: pytest.MonkeyPatch) -> Strategy:
    """``probe-fc``: a copy of the per-pixel raw-spectra head, registered for this test only."""
    entry = Strategy(
        name="probe-fc",
        description="a throwaway per-pixel probe (test only)",
        trainable="trainables.indomain_fc:train_indomain_fc",
        search_space="search_spaces.indomain_fc:SPACE",
        model_name="fc",
        settings=("feature_dtype",),  # pretend it reads a setting of its own: it keys only its cells
        header="probe head",
        color="#123456",
        gpus_per_trial=0.25,
    )
    monkeypatch.setitem(STRATEGIES, "probe-fc", entry)
    return entry


#: the probe kind's weights hash: every row of its strategy must carry it
PROBE_SHA = "probe0features"
#: what the probe exporter did (cleared by the fixture) and where it writes
PROBE: dict = {"calls": [], "out": None}
N_PROBE_FEATURES = 4


def probe_provider(cfg, echo) -> object:
    """The probe kind's provider: no weights file, a fixed hash, the constants every kind's trials get."""
    from study.orchestration.inputs import ResolvedBackbone

    echo("backbone: probe features (test only)")
    return ResolvedBackbone("probe-features", None, PROBE_SHA, {"backbone_hash": PROBE_SHA})


def probe_exporter(cfg, spec, data_root: Path, backbone, echo) -> Path:
    """The probe kind's exporter: band-group means as 4-d "features", in the HS3-Bench feature-file layout."""
    import h5py
    import numpy as np

    from study.data.datasets import open_split
    from study.features import feature_attrs

    PROBE["calls"].append((spec.name, backbone.kind, backbone.sha))
    out = Path(PROBE["out"]) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    for split in spec.splits:
        src = open_split(data_root, spec, split)
        with h5py.File(out / spec.file_name(split), "w") as fh, h5py.File(src.path, "r") as raw:
            for name in src.names:
                image, _ = src.read(name)
                feats = np.stack([g.mean(-1) for g in np.array_split(image, N_PROBE_FEATURES, axis=-1)], -1)
                grp = fh.create_group(name)
                grp.create_dataset("image", data=(feats / max(float(np.abs(feats).max()), 1.0)).astype(np.float32))
                grp.create_dataset("labels", data=raw[name]["labels"][()])
            fh.attrs.update(feature_attrs(src, ckpt_hash=backbone.sha, bn_mode="chunk", chunk=1, dtype="float32",
                                          autocast="off", dim=N_PROBE_FEATURES, dataset=spec.name, split=split))
    echo(f"features: {out} (probe)")
    return out


@pytest.fixture
def probe_features(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Strategy:
    """``probe-features``: a throwaway feature-backbone kind (provider + exporter of this module), and
    ``probe-features-fc``: the HyperSL-FC head on its features, both registered for this test only."""
    kind = BackboneKind("probe-features", "backbone", provider=f"{__name__}:probe_provider",
                        exporter=f"{__name__}:probe_exporter")
    entry = Strategy(
        name="probe-features-fc",
        description="a throwaway per-pixel head on the probe kind's features (test only)",
        trainable="trainables.crossdomain_fc:train_crossdomain_fc",
        search_space="search_spaces.indomain_fc:SPACE",  # no freeze_depth: every trial reads the features
        model_name="fc",
        inputs="features",
        backbone="probe-features",
        header="probe features head",
        color="#654321",
        gpus_per_trial=0.25,
    )
    monkeypatch.setitem(BACKBONES, kind.name, kind)
    monkeypatch.setitem(STRATEGIES, entry.name, entry)
    monkeypatch.setitem(PROBE, "calls", [])
    monkeypatch.setitem(PROBE, "out", tmp_path / "probe-features")
    return entry


def test_a_strategy_registered_in_one_place_runs_a_study_and_the_report(
        probe_fc: Strategy, ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.report import write_report
    from study.run import build_parser, main
    from study.store import read_store

    assert "probe-fc" in build_parser().format_help()  # the CLI lists it without knowing it
    results = tmp_path / "res"
    rc = main(["--strategy", "probe-fc", "--data-root", str(tiny_root), "--results", str(results), "--smoke",
               "--fractions", "1.0", "--trials", "2", "--epochs", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "probe head" in out  # the header names its model from the registry entry
    df = read_store(results)
    assert set(df["strategy"]) == {"probe-fc"}
    assert df.filter(pl.col("row_kind") == "final").height == 1 and df.filter(pl.col("row_kind") == "trial").height == 2
    page, _ = write_report(results)
    text = Path(page).read_text()
    assert "probe-fc" in text and "#123456" in text  # its colour comes from its entry


def test_a_feature_backbone_kind_registered_in_one_place_feeds_its_strategys_study(
        probe_features: Strategy, ray_session, tiny_root: Path, tmp_path: Path, capsys) -> None:
    from study.run import main
    from study.store import read_store

    results = tmp_path / "res"
    rc = main(["--strategy", "probe-features-fc", "--data-root", str(tiny_root), "--results", str(results),
               "--smoke", "--fractions", "1.0", "--trials", "2", "--epochs", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert PROBE["calls"] == [("hyko2", "probe-features", PROBE_SHA)]  # the driver asked the probe kind, once
    assert "probe features head" in out and "(probe)" in out
    df = read_store(results)
    assert set(df["strategy"]) == {"probe-features-fc"}
    assert set(df["backbone_hash"]) == {PROBE_SHA}  # the rows name the probe's backbone, not HyperSL's
    assert df.filter(pl.col("row_kind") == "final").height == 1 and df.filter(pl.col("row_kind") == "trial").height == 2


def test_every_feature_strategy_has_a_kind_with_an_exporter_and_a_study_reads_one_kind(
        probe_features: Strategy) -> None:
    from study.config import build_config
    from study.errors import ConfigError
    from study.orchestration.inputs import feature_kinds

    for s in STRATEGIES.values():
        if s.inputs == "features":
            assert BACKBONES[s.backbone or ""].exporter is not None, s.name
    for kind in BACKBONES.values():
        assert callable(kind.load_provider()) and (kind.exporter is None or callable(kind.load_exporter()))
    probe = build_config("smoke", strategies=("probe-features-fc", "indomain"), dataset="hyko2", results="r")
    assert feature_kinds(probe) == ["probe-features"]
    others = [s.name for s in STRATEGIES.values() if s.inputs == "features" and s.backbone != "probe-features"]
    mixed = build_config("smoke", strategies=(*others, "probe-features-fc"), dataset="hyko2", results="r")
    with pytest.raises(ConfigError, match="different backbone kinds"):
        feature_kinds(mixed)


def test_only_its_own_settings_key_a_strategys_cells(probe_fc: Strategy) -> None:
    from study.config import build_config
    from study.data.subsets import make_subset
    from study.orchestration import cell_id

    subset = make_subset("hyko2", [f"s{i}" for i in range(4)], [frozenset({1})] * 4, 1.0, 0)
    a = build_config("smoke", strategies=("probe-fc", "indomain"), dataset="hyko2", results="r")
    b = build_config("smoke", strategies=("probe-fc", "indomain"), dataset="hyko2", results="r",
                     feature_dtype="float32")
    assert a.study_id == b.study_id and cell_id(a, "indomain", subset) == cell_id(b, "indomain", subset)
    assert cell_id(a, "probe-fc", subset) != cell_id(b, "probe-fc", subset)


def test_no_framework_module_names_a_strategy() -> None:
    names = sorted(STRATEGIES, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = {path: sorted(set(pattern.findall((ROOT / path).read_text()))) for path in AGNOSTIC}
    assert {p: n for p, n in found.items() if n} == {}
    assert strategies.baseline_strategy() in STRATEGIES
    assert sum(s.baseline for s in STRATEGIES.values()) == 1
