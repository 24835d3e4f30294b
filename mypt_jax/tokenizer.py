"""`mypt_jax.tokenizer.Tokenizer`, the public name of `mypt_jax.data.tokenizer.Tokenizer`."""

from mypt_jax.data.tokenizer import Tokenizer, TokenizerError, head_tokenizer  # noqa: F401
