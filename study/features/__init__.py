"""Frozen-backbone features: the chunk-BN export of per-pixel HyperSL features, the per-study cache
and its sharded export over a Ray cluster (``python -m study.features``), and the cost model that decides
whether k = 0 trials read the cache or compute the features themselves (``--features``).

The public names of the package are exported here, and only here; its modules import each other
directly."""

from study.features.cache import ensure_features, feature_cache_path, is_current, source_id
from study.features.cli import main
from study.features.cost import (
    CPU_FLOPS_PER_S,
    DTYPE_BYTES,
    FEATURE_MODES,
    FLOP_SHARE,
    READ_BYTES_PER_S,
    FeatureCost,
    choose_features,
    flop_rate,
    forward_flops,
    gpu_peaks,
)
from study.features.export import (
    GPU_COMPUTE_PIXELS,
    PASS_MEMORY_SHARE,
    PASS_PEAK_FACTOR,
    bn_context,
    default_chunk,
    export_image,
    feature_attrs,
    pass_pixels,
    temp_path,
)

__all__ = [
    "CPU_FLOPS_PER_S",
    "DTYPE_BYTES",
    "FEATURE_MODES",
    "FLOP_SHARE",
    "FeatureCost",
    "GPU_COMPUTE_PIXELS",
    "PASS_MEMORY_SHARE",
    "PASS_PEAK_FACTOR",
    "READ_BYTES_PER_S",
    "bn_context",
    "choose_features",
    "default_chunk",
    "ensure_features",
    "export_image",
    "feature_attrs",
    "feature_cache_path",
    "flop_rate",
    "forward_flops",
    "gpu_peaks",
    "is_current",
    "main",
    "pass_pixels",
    "source_id",
    "temp_path",
]
