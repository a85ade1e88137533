"""The published configuration, pinned: every ``PAPER`` value per dataset and arm, the export's chunk sizes.

A reproduction is only as good as these numbers, and a changed one (a batch size, a learning rate, a chunk)
runs without any error. So they are written out here once more, each with where it comes from, and the
product's values must equal this table exactly (same keys, same values). The sources are the configs of
``nickstheisen/cross-domain-hsi`` (commit 29d98f4a) and ``nickstheisen/hyperseg`` (commit 71223268) as
copied into docs/reference.md:

- §R8 / §R18 — RU-Net recipe: AdamW lr 1e-3, weight decay 0, dropout 0.25, batch HyKo2 16, HSI-Drive 32,
  HCV2 4 full images (``run/conf/model/runet.yaml``, ``hs3-baseline.yaml``); max 500 epochs, patience 30.
- §R16.2 / §R18 — HyperSL-RU-Net: the same RU-Net recipe on frozen 256-d features, batch 16 / **16** / 4.
- §R16.3 / §R18 — HyperSL-FC: BN + Linear head, AdamW lr 1e-4, wd 1e-4, one step per **8,192** pixels of a
  loaded batch of HyKo2 8, HSI-Drive 32, HCV2 4 images; backbone frozen.
- §R16 (last sentence) — the repository's in-domain per-pixel ``mlp`` "fc": Linear(C, K) on raw spectra
  (no BatchNorm), lr 1e-3, **4,096**-pixel sub-batches; weight decay not stated.
- §R17 — feature export: consecutive chunks of **5,000** pixels (HCV2, HSI-Drive) or **50,000** (HyKo2)
  (``scripts/dataset_utils/export_features.py``).

Values marked "project" are not in the sources: the study's own choice where the paper is silent (the
backbone lr of a backbone that k = 0 keeps frozen; the mlp baseline's weight decay and loaded images).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from study.config import build_config
from study.features import default_chunk, export_image
from study.strategies import STRATEGIES
from study.train.settings import TrainSettings

DATASETS = ("hyko2", "hsidrive", "hcv2")

#: strategy -> key -> value (or {dataset: value}), with its source. One row per published number.
PUBLISHED: dict[str, dict[str, object]] = {
    "indomain": {
        "lr": 1e-3,                                               # §R8 AdamW lr
        "weight_decay": 0.0,                                      # §R8
        "dropout": 0.25,                                          # §R7/§R8 Dropout(0.25) in the last Down
        "batch_size": {"hyko2": 16, "hsidrive": 32, "hcv2": 4},   # §R1/§R8 full images
    },
    "crossdomain": {
        "lr": 1e-3,                                               # §R16.2 same RU-Net hyper-parameters
        "weight_decay": 0.0,                                      # §R16.2
        "dropout": 0.25,                                          # §R16.2
        "freeze_depth": 0,                                        # §R16.2 the backbone is frozen
        "backbone_lr": 1e-5,                                      # project: unused at k = 0
        "batch_size": {"hyko2": 16, "hsidrive": 16, "hcv2": 4},   # §R16.2 / §R18 (HSI-Drive 16 on features)
    },
    "crossdomain-fc": {
        "lr": 1e-4,                                               # §R16.3 AdamW lr
        "weight_decay": 1e-4,                                     # §R16.3
        "freeze_depth": 0,                                        # §R16.3 frozen features
        "backbone_lr": 1e-5,                                      # project: unused at k = 0
        "sub_batch": 8192,                                        # §R16.3 one step per 8,192 pixels
        "images_per_batch": {"hyko2": 8, "hsidrive": 32, "hcv2": 4},  # §R16.3 loaded images
    },
    "indomain-fc": {
        "lr": 1e-3,                                               # §R16 mlp "fc"
        "weight_decay": 0.0,                                      # project: not stated in the sources
        "batchnorm": False,                                       # §R16 mlp "fc" = Linear(C, K), no BN
        "sub_batch": 4096,                                        # §R16 4,096-pixel sub-batches
        "images_per_batch": {"hyko2": 8, "hsidrive": 32, "hcv2": 4},  # project: as the FC arm
    },
}

#: §R17: pixels per BatchNorm chunk of the original export script
EXPORT_CHUNKS = {"hyko2": 50000, "hsidrive": 5000, "hcv2": 5000}


def _flat(value: object, dataset: str) -> object:
    return value[dataset] if isinstance(value, dict) else value


def test_every_published_recipe_is_in_the_table_and_nothing_else() -> None:
    with_recipe = {name for name, s in STRATEGIES.items() if s.recipe is not None}
    assert with_recipe == set(PUBLISHED)  # a new recipe needs its row (and source) here
    assert STRATEGIES["crossmodality"].recipe is None  # §R20: no published cross-modality recipe


@pytest.mark.parametrize("strategy", sorted(PUBLISHED))
@pytest.mark.parametrize("dataset", DATASETS)
def test_paper_recipe_equals_the_published_configuration(strategy: str, dataset: str) -> None:
    recipe = STRATEGIES[strategy].load_recipe(dataset)
    expected = {k: _flat(v, dataset) for k, v in PUBLISHED[strategy].items()}
    assert recipe == expected
    for key, value in recipe.items():  # 0 vs 0.0 vs False must not slip through ==
        assert type(value) is type(expected[key]), (key, value)


def test_the_raw_paper_dicts_match_too() -> None:
    """The per-dataset dicts themselves (what the registry resolves), not only the resolved values."""
    import importlib

    for strategy, table in PUBLISHED.items():
        module, _, attr = STRATEGIES[strategy].recipe.partition(":")
        assert getattr(importlib.import_module(module), attr) == table, strategy


def test_paper_protocol_budget_is_500_epochs_with_patience_30() -> None:
    """§R8: max_epochs 500, early stopping on val mIoU with patience 30 (also the loop's default)."""
    cfg = build_config("full", "paper", strategies=("indomain",), dataset="hyko2", results="r")
    assert (cfg.budget.epochs, cfg.budget.patience) == (500, 30)
    assert TrainSettings.from_config({"lr": 1e-3, "max_epochs": 500, "batch_size": 16}).patience == 30
    assert TrainSettings.from_config({"lr": 1e-3, "max_epochs": 500, "batch_size": 16}).hflip_p == 0.1  # §R8


@pytest.mark.parametrize("dataset", DATASETS)
def test_default_export_chunks_are_the_original_scripts(dataset: str) -> None:
    assert default_chunk(dataset) == EXPORT_CHUNKS[dataset]


@pytest.fixture(scope="module")
def tiny_model(tiny_backbone: Path):
    from study.models.checkpoints import load_hypersl

    torch.set_num_threads(1)
    return load_hypersl(tiny_backbone)


def _reference_chunk_features(model, image: np.ndarray, wavelengths: np.ndarray, chunk: int) -> np.ndarray:
    """The original export, re-done here: the module left in train mode (BatchNorm on each chunk's own
    statistics), raster-order chunks of ``chunk`` pixels, fp32, no grad (docs/reference.md §R17)."""
    m = copy.deepcopy(model).train()
    h, w, c = image.shape
    x = torch.from_numpy(image.reshape(h * w, c).astype(np.float32))
    wl = torch.from_numpy(wavelengths.astype(np.float32))
    with torch.no_grad():
        out = torch.cat([m.features(x[s:s + chunk], wl) for s in range(0, h * w, chunk)])
    return out.reshape(h, w, -1).numpy()


def test_chunk_size_changes_the_features_of_an_image_larger_than_a_chunk(tiny_model) -> None:
    """A 100 x 100 image (10,000 px): one 50,000-pixel chunk vs two 5,000-pixel ones give other features,
    and each equals the original export's per-chunk computation; an image within one chunk does not care."""
    rng = np.random.default_rng(0)
    wavelengths = np.linspace(470.0, 640.0, 15)
    image = (rng.random((100, 100, 15)) * np.linspace(0.5, 3.0, 100)[:, None, None]).astype(np.float32)
    big = export_image(tiny_model, image, wavelengths, bn_mode="chunk", chunk_size=50000)
    small = export_image(tiny_model, image, wavelengths, bn_mode="chunk", chunk_size=5000)
    assert big.shape == small.shape == (100, 100, big.shape[-1])
    assert np.abs(big - small).max() > 1e-3  # chunking really changes the features
    np.testing.assert_allclose(big, _reference_chunk_features(tiny_model, image, wavelengths, 50000),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(small, _reference_chunk_features(tiny_model, image, wavelengths, 5000),
                               rtol=1e-4, atol=1e-4)
    one = export_image(tiny_model, image[:40, :40], wavelengths, bn_mode="chunk", chunk_size=5000)
    np.testing.assert_allclose(one, export_image(tiny_model, image[:40, :40], wavelengths, bn_mode="chunk",
                                                 chunk_size=50000), rtol=1e-5, atol=1e-5)
