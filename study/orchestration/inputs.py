"""What a study needs before its first trial: validated data, subsets, backbone weights, features.

Everything that can be wrong with the input (files, fractions, weights) is
found here, before Ray starts. What is prepared follows the chosen strategies'
registry entries (``Strategy.inputs`` and ``Strategy.backbone``), never their
names: a backbone kind is resolved and hashed **once per study** by the
provider its ``BACKBONES`` entry names, and its trials get a path and a hash in
their config (the same way for every kind), never tensors; strategies with
``inputs="features"`` read the features their kind's exporter made once per
dataset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from study.config import StudyConfig
from study.data.datasets import validate_dataset
from study.data.h5reader import H5Split
from study.data.specs import DatasetSpec, get_spec
from study.data.subsets import SubsetManifest, make_subset
from study.data.synthetic.generator import default_cache_dir, ensure_default_dataset
from study.errors import ConfigError, DataValidationError
from study.orchestration.features_mode import FeaturePlan, InTrialFeatures, plan_features
from study.progress import echo as default_echo
from study.store import resolve
from study.strategies import BACKBONES, STRATEGIES, get_strategy


@dataclass(frozen=True)
class ResolvedBackbone:
    """One pretrained backbone of a study: where its weights are and what every trial using it is told."""

    kind: str
    path: Path | None  # None: a random init (only where the user allowed it)
    sha: str | None
    trial_config: dict[str, Any]  # constants for the trials: paths and hashes, never tensors
    #: constants that depend on the dataset (e.g. the export's chunk size), added by :meth:`for_dataset`
    per_dataset: Callable[[DatasetSpec], dict[str, Any]] | None = None
    #: where the weights came from when not a local path: ``hf://OWNER/REPO/FILE@<commit>`` (study.hub), which
    #: study.json records and the report shows; None for a local file or the default
    origin: str | None = None

    def for_dataset(self, spec: DatasetSpec) -> ResolvedBackbone:
        """This backbone with its trial constants for ``spec``'s cells."""
        if self.per_dataset is None:
            return self
        return replace(self, trial_config={**self.trial_config, **self.per_dataset(spec)}, per_dataset=None)


@dataclass(frozen=True)
class PreparedDataset:
    """Validated inputs of a study: the spec, open splits, one subset manifest per fraction, backbones."""

    spec: DatasetSpec
    data_root: Path
    source: str
    splits: dict[str, H5Split]
    subsets: dict[float, SubsetManifest]
    #: frozen-backbone features, same samples as ``splits``: those of the study's feature kind (a study has at
    #: most one, :func:`feature_kinds`; ``features`` holds them by kind)
    feature_splits: dict[str, H5Split] | None = None
    backbones: dict[str, ResolvedBackbone] = field(default_factory=dict)  # by backbone kind
    #: ``--stage-data``: sha256 of every input file of this dataset's trials (computed once, checked per node)
    stage_hashes: dict[str, str] = field(default_factory=dict)
    #: the exported features of every backbone kind that ``inputs="features"`` strategies read, by kind
    features: dict[str, dict[str, H5Split]] = field(default_factory=dict)
    #: ``--features``: whether the feature strategies' k = 0 trials read ``features`` (cache) or compute them
    #: (then nothing is exported); None without a feature strategy
    feature_plan: FeaturePlan | None = None


def check_inputs(cfg: StudyConfig, echo: Callable[[str], None] = default_echo,
                 allow_extreme_values: bool = False) -> dict[str, PreparedDataset]:
    """Every dataset of the study, prepared (:func:`dataset_inputs`), by name. No Ray, no training.

    ``allow_extreme_values`` (``--allow-extreme-values``): a value beyond ``h5reader.MAX_ABS_VALUE`` in the
    data is a warning instead of an error (it does not change the result of data without one: not in any id).

    All datasets are validated before any feature export starts, so a broken file of the last dataset
    stops the study before minutes of work on the first.
    """
    from study.store import check_store_version

    check_store_version(resolve(cfg.runtime.results))  # before anything is written into an incompatible store
    feature_kinds(cfg)  # a registry slip stops the study before any data is made
    data = {name: _validated_data(cfg, get_spec(name), echo, allow_extreme_values) for name in cfg.data.datasets}
    kinds = cfg.backbone_kinds()
    # once per study, cheap kinds first (the registry's order)
    backbones = {k: BACKBONES[k].load_provider()(cfg, echo) for k in BACKBONES if k in kinds}
    return {name: dataset_inputs(cfg, get_spec(name), *data[name], echo, backbones)
            for name in cfg.data.datasets}


def _validated_data(cfg: StudyConfig, spec: DatasetSpec, echo: Callable[[str], None],
                    allow_extreme: bool = False) -> tuple[Path, str, dict[str, H5Split]]:
    if cfg.data.data_root is not None:
        root, source = Path(cfg.data.data_root), str(Path(cfg.data.data_root).resolve())
    else:
        t0 = time.perf_counter()
        root = ensure_default_dataset(spec, cfg.runtime.cache_dir, cfg.data.synthetic, progress=True)
        source = f"synthetic:{root.name}"
        echo(f"embedded default data: synthetic {spec.title}-like cubes in {root} ({time.perf_counter() - t0:.1f} s)")
    splits = validate_dataset(root, spec, allow_extreme)
    for sp in splits.values():
        if sp.extreme:
            echo(f"warning: {sp.extreme}; training on it anyway (--allow-extreme-values)")
    warn_small_images(cfg, splits, echo)
    if cfg.needs_features:  # before the backbone is resolved (a default pretraining takes minutes)
        check_raw_spectra(cfg, splits)
    return root, source + split_variant(splits["train"].path), splits


def warn_small_images(cfg: StudyConfig, splits: dict[str, H5Split], echo: Callable[[str], None]) -> None:
    """One warning per strategy whose network downsamples more than the smallest image of the data measures:
    such images are zero-padded and train (and are scored) mostly on padding."""
    sizes = [(min(h, w), h, w, sp, name) for sp in splits.values() for (h, w), name in zip(sp.shapes, sp.names,
                                                                                             strict=True)]
    if not sizes:
        return
    side, h, w, sp, name = min(sizes, key=lambda t: t[0])
    for s in cfg.strategies:
        factor = get_strategy(s).downsampling
        if side < factor:
            n = sum(t[0] < factor for t in sizes)
            echo(f"warning: {n} image(s) of {sp.spec.name} are smaller than {factor}x{factor}, {s}'s downsampling "
                 f"(the smallest: {h}x{w}, {sp.path.name} sample {name!r}); they are zero-padded and train mostly "
                 "on padding")


def split_variant(path: Path) -> str:
    """`` (hcv2 split old)`` when study.prepare recorded which official split list a file follows, so every row's
    ``data_source`` says which HCV2 split its numbers are on; empty for files without the attribute."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            variant = fh.attrs.get("hcv2_split")
    except OSError:
        return ""
    if variant is None:
        return ""
    return f" (hcv2 split {variant.decode() if isinstance(variant, bytes) else variant})"


def dataset_inputs(cfg: StudyConfig, spec: DatasetSpec, root: Path, source: str, splits: dict[str, H5Split],
                    echo: Callable[[str], None], backbones: dict[str, ResolvedBackbone]) -> PreparedDataset:
    """One dataset's subsets (manifests written), backbones (resolved once per study) and features."""
    results = resolve(cfg.runtime.results)
    check_trainable(spec, splits)
    train = splits["train"]
    subsets = {f: make_subset(spec.name, train.names, train.classes_present(), f, cfg.data.subset_seed,
                              method=cfg.subset_method) for f in cfg.data.fractions}
    for f, m in subsets.items():
        if not m.classes_covered:
            raise DataValidationError(
                f"{splits['train'].path}: the {f:g} training subset ({len(m.names)} image(s): "
                f"{', '.join(m.names[:3])}{' ...' if len(m.names) > 3 else ''}) has no labelled pixel (all are the "
                f"ignore id {spec.ignore_index}); training on it would measure nothing. Raise that fraction or "
                "drop it from --fractions")
        results.write_text(f"manifests/{spec.name}-f{f:g}-s{m.subset_seed}-{m.content_hash}.json", m.to_json())
    backbones = {k: b.for_dataset(spec) for k, b in backbones.items()}
    plans = {k: plan_features(cfg, spec, root, splits, backbones[k]) for k in feature_kinds(cfg)}
    for plan in plans.values():
        echo(plan.line)
    features = {k: export_features(cfg, spec, root, backbones[k], echo) for k, p in plans.items() if p.mode == "cache"}
    feature_splits = next(iter(features.values()), None)
    stage_hashes: dict[str, str] = {}
    if cfg.runtime.stage_data is not None:
        from study.data.staging import hash_files

        files = [str(sp.path) for sp in splits.values()]
        files += [str(sp.path) for fs in features.values() for sp in fs.values()]
        files += [str(b.path) for b in backbones.values() if b.path is not None]
        t0 = time.perf_counter()
        stage_hashes = hash_files({f: f for f in files})
        echo(f"--stage-data: {len(stage_hashes)} input file(s) of {spec.name} hashed for the per-node copies "
             f"({time.perf_counter() - t0:.1f} s)")
    return PreparedDataset(spec, root, source, splits, subsets, feature_splits, backbones, stage_hashes, features,
                           next(iter(plans.values()), None))


def feature_kinds(cfg: StudyConfig) -> list[str]:
    """The backbone kinds whose features the chosen strategies read (``inputs="features"``), in order: each
    needs a ``BACKBONES`` entry with an exporter. At most one per study: a cell reads the study's one feature
    set (``PreparedDataset.feature_splits``)."""
    users: dict[str, list[str]] = {}
    for name in cfg.strategies:
        strategy = get_strategy(name)
        if strategy.inputs != "features":
            continue
        kind = BACKBONES.get(strategy.backbone or "")
        if kind is None or kind.exporter is None:
            raise ConfigError(f"strategy {name!r} reads features, but its backbone kind {strategy.backbone!r} "
                              "has no BACKBONES entry with an exporter (study/strategies.py)")
        users.setdefault(kind.name, []).append(name)
    if len(users) > 1:
        raise ConfigError("the chosen strategies read the features of different backbone kinds ("
                          + "; ".join(f"{k}: {', '.join(v)}" for k, v in users.items())
                          + "); run them as separate studies (--strategy), one feature kind each")
    return list(users)


def check_raw_spectra(cfg: StudyConfig, splits: dict[str, H5Split]) -> None:
    """Strategies on HyperSL features export them from raw spectra (and k > 0 trials run HyperSL on the raw
    spectra): a data root of feature files would give them features of features. Found before any export."""
    for split in splits.values():
        if split.feature_dim is not None:
            names = ", ".join(s for s in cfg.strategies if get_strategy(s).inputs == "features")
            raw = " / ".join(s for s in STRATEGIES if get_strategy(s).inputs == "raw")
            raise DataValidationError(
                f"{split.path}: holds {split.feature_dim}-d HyperSL features, not raw spectra; the strategies "
                f"{names} export HyperSL features from raw cubes themselves. Point --data-root at the raw HS3-Bench "
                f"files, or train on these features with a strategy that reads files as they are (--strategy {raw})")


def check_trainable(spec: DatasetSpec, splits: dict[str, H5Split]) -> None:
    """Every split has labelled pixels, and every sample of a split has the same H x W (whole images are
    batched). Found here, before Ray starts, not in the middle of a cell."""
    for name, split in splits.items():
        if not any(split.classes_present()):
            raise DataValidationError(f"{split.path}: no labelled pixel in the {name} split (every pixel is the "
                                      f"ignore id {spec.ignore_index}); it can be neither trained on nor evaluated")
        sizes = dict(zip(split.shapes, split.names, strict=True))
        if len(sizes) > 1:
            (a, na), (b, nb) = list(sizes.items())[:2]
            raise DataValidationError(f"{split.path}: samples differ in size ({na}: {a[0]}x{a[1]}, {nb}: "
                                      f"{b[0]}x{b[1]}); every image of a split must have one H x W (resize the "
                                      "odd ones when converting, e.g. with python -m study.prepare)")


def resolve_rgb_vit(cfg: StudyConfig, echo: Callable[[str], None]) -> ResolvedBackbone:
    """Find and check the RGB ViT weights now, so a missing or wrong file stops before Ray starts."""
    from study.hub import resolve_weights
    from study.models.vit_weights import resolve_rgb_backbone

    opts = cfg.options
    weights, origin = (None, None) if opts.rgb_weights is None else resolve_weights(opts.rgb_weights, "--rgb-weights")
    rgb = resolve_rgb_backbone(weights, opts.vit_size, opts.allow_random_init, cfg.rgb_default_size)
    echo(f"RGB backbone: {rgb.describe()}" + (f" from {origin}" if origin else ""))
    return ResolvedBackbone("rgb-vit", rgb.weights, rgb.sha, dict(rgb.trial_config()), origin=origin)


def resolve_hypersl(cfg: StudyConfig, echo: Callable[[str], None]) -> ResolvedBackbone:
    """The HyperSL checkpoint (``--backbone``: a path or an ``hf://`` reference, resolved through the Hub cache by
    :mod:`study.hub`; or the locally pretrained default, made on first use), read and hashed once; trials with
    freeze depth k > 0 load it from the path, k = 0 trials read cached features."""
    from study.features import default_chunk
    from study.hub import resolve_weights
    from study.models.checkpoints import checkpoint_hash, load_hypersl
    from study.pretrain import default_config, ensure_default_backbone

    origin = None
    if cfg.options.backbone is not None:
        path, origin = resolve_weights(cfg.options.backbone, "--backbone")
        load_hypersl(path)  # not a HyperSL checkpoint: one line, before Ray (providers run once per study)
        if origin:
            echo(f"backbone: {origin} ({path})")
    else:
        t0 = time.perf_counter()
        smoke = cfg.preset == "smoke"  # --smoke: a seconds-long pretraining (plumbing, not quality)
        cache = Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else default_cache_dir()
        path = ensure_default_backbone(cache_dir=cache, config=default_config("cpu", smoke=smoke), progress=True)
        echo(f"backbone: locally pretrained HyperSL ({path}, {time.perf_counter() - t0:.0f} s); a small-scale "
             "sanity pretraining, not the released weights")
    path = path.resolve()
    sha = checkpoint_hash(path)  # cached per file version (study.hashing.file_digest)
    constants = {"backbone_path": str(path), "backbone_hash": sha, "bn_mode": cfg.options.bn_mode}
    return ResolvedBackbone("hypersl", path, sha, constants,
                            per_dataset=lambda spec: {"chunk_size": default_chunk(spec.name)}, origin=origin)


def hypersl_in_trial(cfg: StudyConfig, spec: DatasetSpec, root: Path, backbone: ResolvedBackbone) -> InTrialFeatures:
    """The ``hypersl`` kind's k = 0 features made in the trial (``--features compute``): HyperSL's width and
    forward FLOPs per pixel for ``spec``'s bands, and its trials' constants: the mode, the cache's storage dtype
    (the features are rounded to it, so they are the ones the cache would hold) and the folder the cache would
    hold them in (only the chunk statistics are kept there: no feature file is written)."""
    from study.features import default_chunk, feature_cache_path, forward_flops, source_id
    from study.models.checkpoints import load_hypersl

    assert backbone.path is not None and backbone.sha is not None, "a HyperSL backbone always has weights"
    model = load_hypersl(backbone.path)
    cache = Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else default_cache_dir()
    dtype = cfg.options.feature_dtype
    folder = feature_cache_path(cache, backbone.sha, spec.name, "train", cfg.options.bn_mode,
                                default_chunk(spec.name), dtype, source_id(root)).parent
    return InTrialFeatures(model.dim, forward_flops(model, spec.wavelength_array()),
                           {"features": "compute", "feature_dtype": dtype, "feature_folder": str(folder)})


def export_features(cfg: StudyConfig, spec: DatasetSpec, root: Path, backbone: ResolvedBackbone,
                    echo: Callable[[str], None]) -> dict[str, H5Split]:
    """Per-pixel features of every split of ``spec`` by ``backbone``'s kind (its ``BACKBONES`` exporter),
    validated like any data root: the folder the exporter returns is an HS3-Bench data root of feature files.

    The frozen backbone's features are the expensive part of the feature strategies: the exporter's cache
    makes every trial of every cell reuse them.
    """
    folder = BACKBONES[backbone.kind].load_exporter()(cfg, spec, root, backbone, echo)
    return validate_dataset(Path(folder), spec)


def export_hypersl_features(cfg: StudyConfig, spec: DatasetSpec, root: Path, backbone: ResolvedBackbone,
                            echo: Callable[[str], None]) -> Path:
    """The ``hypersl`` kind's exporter: per-pixel HyperSL features of every split, computed at most once per
    (backbone, data, settings) by :func:`study.features.ensure_features`."""
    import torch

    from study.features import ensure_features

    assert backbone.path is not None, "a HyperSL backbone always has weights"
    cache = Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # on a cluster the export is spread over it (one Ray task per image shard, each on a GPU where there is one)
    cluster = bool(cfg.runtime.address or os.environ.get("RAY_ADDRESS"))
    folder = ensure_features(cache, backbone.path, root, spec.name, bn_mode=cfg.options.bn_mode,
                             dtype=cfg.options.feature_dtype, device=device, progress=True, cluster=cluster)
    echo(f"features: {folder} (bn mode {cfg.options.bn_mode}, {cfg.options.feature_dtype}; "
         f"{time.perf_counter() - t0:.1f} s)")
    return folder
