"""Models: one configurable decoder-only `Transformer` and its named configs."""

from lsi.models import configs
from lsi.models.configs import TransformerConfig, get_config
from lsi.models.transformer import (
    CACHE_LOGICAL_AXES,
    DecodeCache,
    LayerwiseDecodeCache,
    Transformer,
    abstract_params,
    decode_layerwise,
    init_decode_cache,
    init_params,
    padded_positions,
    param_logical_axes,
    layerwise_cache,
    split_layers,
)

__all__ = [
    "configs", "TransformerConfig", "get_config", "CACHE_LOGICAL_AXES", "DecodeCache",
    "LayerwiseDecodeCache", "Transformer", "abstract_params", "decode_layerwise", "init_decode_cache", "init_params",
    "layerwise_cache", "padded_positions", "param_logical_axes", "split_layers",
]
