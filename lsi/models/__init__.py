"""Models: one configurable decoder-only `Transformer` and its named configs. (The layer-by-layer decode in
`lsi.models.transformer` is the sampler's, used only through `lsi.decoding.TransformerLM`.)"""

from lsi.models import configs
from lsi.models.configs import TransformerConfig, get_config
from lsi.models.transformer import (
    CACHE_LOGICAL_AXES,
    DecodeCache,
    Transformer,
    abstract_params,
    init_decode_cache,
    init_params,
    padded_positions,
    param_logical_axes,
)

__all__ = [
    "configs", "TransformerConfig", "get_config", "CACHE_LOGICAL_AXES", "DecodeCache", "Transformer",
    "abstract_params", "init_decode_cache", "init_params", "padded_positions", "param_logical_axes",
]
