"""Host side of decoding: prompts cut to fit the block, and the buckets that bound recompiles.

Prompts are left-padded to a power-of-two bucket and new tokens are counted in power-of-two
buckets, so other lengths in the same bucket reuse the compiled generation loop. A prompt
plus `max_new_tokens` longer than `block_size` is cut from the left, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

PROMPT_BUCKET_MIN = 16
NEW_TOKENS_BUCKET_MIN = 16


def _pow2_at_least(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def prompt_bucket(max_prompt_len: int, block_size: int) -> int:
    return min(_pow2_at_least(max_prompt_len, PROMPT_BUCKET_MIN), max(block_size, max_prompt_len))


def new_tokens_bucket(max_new_tokens: int) -> int:
    return _pow2_at_least(max_new_tokens, NEW_TOKENS_BUCKET_MIN)


def fit_new_tokens(
    prompt_lens: Sequence[int], block_size: int, default: int, name: str = "max_new_tokens"
) -> tuple[int, str | None]:
    """`default`, or what block_size leaves after the longest prompt when that is less.

    For a caller whose user did not choose max_new_tokens. Returns the count and, when it is
    below `default`, a one-line note that says why (naming the setting `name`). A prompt that
    leaves no room still gets one new token (`fit_prompts` then cuts the prompt and warns).
    """
    longest = max(max(prompt_lens, default=0), 1)  # an empty prompt is fed as one id
    n = max(1, min(default, block_size - longest))
    if n == default:
        return n, None
    prompt = "the longest prompt" if len(prompt_lens) > 1 else "the prompt"
    return n, (f"{name} not given: using {n}, what block_size {block_size} leaves after "
               f"{prompt} ({longest} ids), instead of the default {default}")


def fit_prompts(
    prompts_ids: Sequence[Sequence[int]], *, block_size: int, max_new_tokens: int
) -> list[list[int]]:
    """Each prompt cut from the left so that prompt + max_new_tokens <= block_size (warns)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if max_new_tokens >= block_size:
        raise ValueError(
            f"max_new_tokens {max_new_tokens} leaves no room for the prompt: the model's "
            f"block_size is {block_size}, so at most {block_size - 1} new tokens fit"
        )
    keep = block_size - max_new_tokens
    fitted = []
    for i, ids in enumerate(prompts_ids):
        ids = [int(t) for t in ids] or [0]  # upstream feeds id 0 for an empty prompt
        if len(ids) > keep:
            warnings.warn(
                f"prompt {i}: {len(ids)} ids + max_new_tokens {max_new_tokens} exceed "
                f"block_size {block_size}; dropped the first {len(ids) - keep} ids",
                stacklevel=3,
            )
            ids = ids[-keep:]
        fitted.append(ids)
    return fitted


def left_pad(prompts_ids: Sequence[Sequence[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    lens_B = np.array([len(ids) for ids in prompts_ids], np.int32)
    prompt_BxP = np.zeros((len(prompts_ids), width), np.int32)
    for b, ids in enumerate(prompts_ids):
        prompt_BxP[b, width - len(ids):] = ids
    return prompt_BxP, lens_B
