"""mypt-jax: the MyPT Phase 3a SFT pipeline in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import mypt_jax.data.tokenizer` (datagen, prepare) never pays for importing JAX.
    if name == "load":
        from mypt_jax.api import load

        return load
    raise AttributeError(f"module 'mypt_jax' has no attribute {name!r}")
