"""``--backbone`` / ``--rgb-weights hf://OWNER/REPO/FILE[@REVISION]`` (study/hub.py, issue 26).

Nothing is downloaded: every test builds a cache folder in the Hub's layout (``models--OWNER--REPO/refs/main``
holding a commit id, ``snapshots/<commit>/FILE``) and sets ``HF_HUB_CACHE`` + ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from study.errors import ConfigError
from study.hub import parse_hub_ref, resolve_hub_file, resolve_weights, weights_arg
from study.run import build_parser, config_from_args

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REF = "hf://WeilKon/HyperSL/5_base_mask95_checkpoint.pt"


def hub_cache(root: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A Hugging Face cache folder holding ``files`` of ``repo`` at ``commit``, ``refs/main`` naming it."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)  # no newline, as the Hub writes it
    for name, data in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def released_checkpoint_bytes(tmp_path: Path) -> bytes:
    """A tiny HyperSL in the layout HyperSL's train.py writes (``module.`` keys, epoch/optimizer/scheduler)."""
    import torch

    from study.models.hypersl import build_hypersl

    torch.manual_seed(0)
    model = build_hypersl("tiny")
    path = tmp_path / "released.pt"
    torch.save({"epoch": 5, "model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}}, path)
    return path.read_bytes()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_references_parse_and_flags_keep_them_as_text() -> None:
    ref = parse_hub_ref("hf://WeilKon/HyperSL/sub/dir/w.pt@v1.0")
    assert (ref.repo_id, ref.filename, ref.revision) == ("WeilKon/HyperSL", "sub/dir/w.pt", "v1.0")
    assert parse_hub_ref(REF).revision is None and parse_hub_ref(REF).show("abc") == REF + "@abc"
    for bad in ("hf://WeilKon/HyperSL", "hf://WeilKon//w.pt", "hf://WeilKon/HyperSL/w.pt@"):
        with pytest.raises(ConfigError, match="hf://OWNER/REPO/FILE"):
            parse_hub_ref(bad)
    assert weights_arg(REF) == REF and weights_arg("a/b.pt") == Path("a/b.pt")  # a Path would fold the //
    cfg = config_from_args(build_parser().parse_args(["--strategy", "crossdomain-fc", "--backbone", REF]))
    assert cfg.options.backbone == REF and cfg.settings()["backbone"] == REF
    with pytest.raises(ConfigError, match="hf://OWNER/REPO/FILE"):
        config_from_args(build_parser().parse_args(["--strategy", "crossdomain-fc", "--backbone", "hf://x/y"]))


def test_a_reference_resolves_from_the_cache_offline(offline_cache: Path) -> None:
    hub_cache(offline_cache, "WeilKon/HyperSL", {"5_base_mask95_checkpoint.pt": b"weights", "sub/w.pt": b"w2"})
    path, origin = resolve_hub_file(REF)
    assert path.read_bytes() == b"weights" and origin == f"{REF}@{COMMIT}"
    pinned, origin = resolve_hub_file(f"{REF}@{COMMIT}")  # a revision pinned to the commit
    assert pinned == path and origin == f"{REF}@{COMMIT}"
    nested, _ = resolve_weights("hf://WeilKon/HyperSL/sub/w.pt", "--rgb-weights")
    assert nested.read_bytes() == b"w2"
    assert resolve_weights("plain.pt", "--backbone") == (Path("plain.pt"), None)


def test_offline_and_not_cached_is_one_line_naming_repo_file_and_cache(offline_cache: Path) -> None:
    hub_cache(offline_cache, "WeilKon/HyperSL", {"other.pt": b"x"})
    with pytest.raises(ConfigError) as err:
        resolve_hub_file(REF)
    text = str(err.value)
    assert "\n" not in text and "WeilKon/HyperSL" in text and "5_base_mask95_checkpoint.pt" in text
    assert str(offline_cache) in text and "HF_HUB_OFFLINE" in text


def test_without_huggingface_hub_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    with pytest.raises(ConfigError, match=r'pip install "hsistudy\[hub\]"'):
        resolve_hub_file(REF)
    with pytest.raises(ConfigError, match=r'pip install "hsistudy\[hub\]"'):  # found before anything starts
        config_from_args(build_parser().parse_args(["--strategy", "crossdomain-fc", "--backbone", REF]))


def test_rgb_weights_resolve_through_the_same_cache(offline_cache: Path) -> None:
    from study.config import build_config
    from study.models.checkpoints import checkpoint_hash, st_encode
    from study.models.vit import build_vit
    from study.models.vit_weights import cached_weights
    from study.orchestration.inputs import resolve_rgb_vit

    data = st_encode(build_vit("tiny").state_dict(), {})
    hub_cache(offline_cache, "someone/dinov2-tiny", {"model.safetensors": data})
    cfg = build_config("smoke", strategies=("crossmodality",), dataset="hyko2", results="r",
                       rgb_weights="hf://someone/dinov2-tiny/model.safetensors")
    rgb = resolve_rgb_vit(cfg, echo=lambda _: None)
    assert rgb.origin == f"hf://someone/dinov2-tiny/model.safetensors@{COMMIT}"
    assert rgb.sha == checkpoint_hash(rgb.path) and rgb.path.read_bytes() == data
    # the default look-up reads the same cache layout (refs/main first), still never downloading
    hub_cache(offline_cache, "timm/vit_small_patch14_dinov2.lvd142m", {"model.safetensors": data})
    assert cached_weights("small") == (offline_cache / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots"
                                       / COMMIT / "model.safetensors")


def test_the_hypersl_provider_hashes_the_hub_file(offline_cache: Path, tmp_path: Path) -> None:
    from study.config import build_config
    from study.models.checkpoints import checkpoint_hash
    from study.orchestration.inputs import resolve_hypersl

    hub_cache(offline_cache, "WeilKon/HyperSL", {"5_base_mask95_checkpoint.pt": released_checkpoint_bytes(tmp_path)})
    cfg = build_config("smoke", strategies=("crossdomain-fc",), dataset="hyko2", results="r", backbone=REF)
    backbone = resolve_hypersl(cfg, echo=lambda _: None)
    assert backbone.origin == f"{REF}@{COMMIT}" and backbone.sha == checkpoint_hash(backbone.path)
    assert backbone.trial_config["backbone_hash"] == backbone.sha


@pytest.mark.slow
def test_a_study_trains_with_the_released_weights_from_the_hub_cache(tmp_path: Path) -> None:
    """Issue 26's done-means: ``HF_HUB_CACHE=<cache> HF_HUB_OFFLINE=1 python -m study.run --strategy crossdomain-fc
    --smoke --backbone hf://WeilKon/HyperSL/5_base_mask95_checkpoint.pt`` trains with that file."""
    import hashlib

    import polars as pl

    from study.report import write_report
    from study.store import read_store

    data = released_checkpoint_bytes(tmp_path)
    cache = hub_cache(tmp_path / "hf", "WeilKon/HyperSL", {"5_base_mask95_checkpoint.pt": data})
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "HSISTUDY_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "study.run", "--strategy", "crossdomain-fc", "--smoke", "--backbone",
                        REF, "--results", str(results), "--fractions", "1.0", "--trials", "1", "--num-cpus", "2"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"{REF}@{COMMIT}" in p.stdout  # the provider names the resolved origin
    df = read_store(results)
    finals = df.filter(pl.col("row_kind") == "final")
    assert finals.height >= 1
    assert set(df["backbone_hash"]) == {hashlib.sha256(data).hexdigest()[:16]}
    study = json.loads((results / "study.json").read_text())
    assert study["backbone_origins"] == {"hypersl": f"{REF}@{COMMIT}"}
    assert study["settings"]["backbone"] == REF
    page, _ = write_report(results)
    assert f"{REF}@{COMMIT}" in Path(page).read_text()
