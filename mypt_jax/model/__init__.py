"""Model: its config, the transformer, attention, the parameter table and the fused loss.

`mypt_jax.model.GPT` and `mypt_jax.model.ModelConfig` stay the public names.
"""

from mypt_jax.model.config import ConfigError, ModelConfig  # noqa: F401
from mypt_jax.model.param_table import (  # noqa: F401
    param_logical_axes,
    param_shapes,
    param_shardings,
)
from mypt_jax.model.transformer import GPT, abstract_model, from_params  # noqa: F401
