"""Model: its config, the transformer, attention, the parameter table and the fused loss.

`mypt_jax.model.GPT` and `mypt_jax.model.ModelConfig` stay the public names.
"""

from mypt_jax.model.transformer import (  # noqa: F401
    GPT,
    ConfigError,
    ModelConfig,
    abstract_model,
    from_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
)
