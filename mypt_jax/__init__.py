"""mypt-jax: the MyPT Phase 3a SFT pipeline in JAX/Flax."""

from mypt_jax.parallel import platforms as _platforms

__version__ = "0.1.0"

# Before any entry point or API call starts a JAX backend: no libtpu probe (and its five lines of
# errors) on a host without a TPU. Cheap, and never imports JAX (mypt_jax/parallel/platforms.py).
_platforms.skip_tpu_probe_without_tpu()


def __getattr__(name: str):
    # Lazy so that `import mypt_jax.data.tokenizer` (datagen, prepare) never pays for importing JAX.
    if name == "load":
        from mypt_jax.api import load

        return load
    raise AttributeError(f"module 'mypt_jax' has no attribute {name!r}")
