"""Jitted generation with a fixed-size KV cache: one prefill, then one `lax.while_loop`.

Semantics follow the upstream `GPT.generate` (UPSTREAM_MODEL.md §4.3), batched:

- Greedy when temperature <= 0: argmax of the raw logits, first index on ties; top-k, top-p
  and the repetition penalty are then ignored.
- Otherwise, in float32: divide by temperature; repetition penalty over the unique ids among
  the last `penalty_window` (256) ids of prompt + generated text (logit > 0 -> / penalty,
  else * penalty); top-k (drop logits below the k-th largest); top-p (sorted descending,
  softmax, cumulative sum, drop where it exceeds p, shifted right so the best token always
  stays); if nothing finite is left, the unfiltered logits; then one categorical draw.
  Draws come from an explicit PRNG key (`jax.random.fold_in(key, step)`), so they are
  reproducible for a fixed key and batch, but are not torch's `multinomial` stream.
- Repeat guard (upstream, on by default): before appending a token, a row whose sequence
  (prompt included) is longer than 64 ids and whose last 32 ids equal the 32 before them
  stops without appending it.
- Stop ids (default `</myPT_assistant>` and `<myPT_eot>` of the token map) are kept in the
  output; each row stops on its own and later slots are `PAD_ID`.

Shapes and compilation: prompts are left-padded to a power-of-two bucket `P` (at least 16,
at most block_size) and `max_new_tokens` is rounded up to a power-of-two `N` (at least 16);
the cache holds `P + N` slots. The jitted function is compiled once per (batch size, P, N),
model structure and greedy-or-sampled; sampling parameters, `max_new_tokens` and the key are
traced arrays, so changing them (within sampling), the repeat guard switch or the prompt
length within a bucket never recompiles. Greedy decoding (temperature <= 0, the eval
prompts') is a program of its own without the sampler.

Length limit: a prompt plus `max_new_tokens` must fit in `block_size` (upstream crashes
otherwise). Left unset, `max_new_tokens` is the default (100, upstream's) or what block_size
leaves after the longest prompt, whichever is less, and a warning says so. A given value that
leaves a prompt too little room cuts that prompt from the left so that prompt +
max_new_tokens == block_size, with a warning saying how many ids were dropped;
`max_new_tokens >= block_size` is refused with a ValueError. An empty prompt becomes the
single id 0, as upstream.

Layers in the loop (`scan_layers`, `GPT.decode`): None (default) = `layers_scanned`: scanned
on TPU/GPU, unrolled on CPU; True/False force a form (same ids). XLA:CPU runs the unrolled
loop faster (8 layers x 256 wide, vocab 512: 2.53 vs 3.32 ms/step at batch 1, 6.57 vs 7.43 at
batch 8; bench_decode's head-bound models: within noise), but its program holds every layer
twice (prefill, loop body): the 750M 32-layer eval-prompt loop compiled for a TPU v5p-8 (the
preflight, on a shared 2-core CPU) in 78.4 s unrolled vs 21.9 s scanned (load ~1.7; 167.5 vs
53.2 s at load ~4). Most of the rest was the sampler, then compiled for greedy runs too:
the greedy scanned loop without it compiled in 4.3 s.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.decoding.fitting import (
    fit_new_tokens,
    fit_prompts,
    left_pad,
    new_tokens_bucket,
    prompt_bucket,
)

PAD_ID = -1  # out_ids after a row has stopped
DEFAULT_MAX_NEW_TOKENS = 100  # upstream generate.py and GPT.generate
PENALTY_WINDOW = 256  # upstream recent_penalty_window
REPEAT_GUARD_SPAN = 32  # upstream: last 32 ids == the 32 before them, checked when len > 64
STOP_SLOTS = 4  # stop ids are padded to a multiple of this (shapes stay the same)
CANDIDATES = 256  # top-k / top-p work on the best 256 logits when that is exact (see _sample)

STOP_REASONS = ("length", "stop_token", "repeat")  # index = the reason code generate_ids returns
_LENGTH, _STOP_TOKEN, _REPEAT = range(3)


# ----------------------------------------------------------------------------------------
# Sampling parameters and presets
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # <= 0: greedy (argmax), everything below ignored
    top_k: int = 50  # 0: off
    top_p: float = 0.95  # >= 1: off
    repetition_penalty: float = 1.1  # 1: off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def arrays(self) -> dict[str, jax.Array]:
        return {
            "temperature": jnp.float32(self.temperature),
            "top_k": jnp.int32(self.top_k),
            "top_p": jnp.float32(self.top_p),
            "repetition_penalty": jnp.float32(self.repetition_penalty),
        }


GREEDY = SamplingParams(0.0, 0, 1.0, 1.0)
# The upstream generate.py presets (temperature, top_k, top_p, repetition_penalty).
PRESETS: dict[str, SamplingParams] = {
    "chat": SamplingParams(0.7, 50, 0.9, 1.1),
    "creative": SamplingParams(1.0, 100, 0.95, 1.2),
    "factual": SamplingParams(0.3, 10, 0.8, 1.0),
    "code": SamplingParams(0.2, 40, 0.95, 1.0),
    "deterministic": SamplingParams(0.0, 1, 1.0, 1.0),
}


def get_preset(name: str) -> SamplingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None


# ----------------------------------------------------------------------------------------
# Picking the next token
# ----------------------------------------------------------------------------------------

def _filter_sorted(vals_BxK, lse_full_B, top_k, top_p) -> jax.Array:
    """Top-k then top-p on logits sorted in descending order (-inf where removed)."""
    K = vals_BxK.shape[-1]
    k = jnp.clip(top_k, 1, K)
    kth_B = jnp.take_along_axis(vals_BxK, jnp.broadcast_to(k - 1, vals_BxK.shape[:1])[:, None], -1)
    vals_BxK = jnp.where((top_k > 0) & (vals_BxK < kth_B), -jnp.inf, vals_BxK)
    # Softmax over what top-k kept; without top-k that is the whole vocabulary, whose
    # normaliser the caller passes (the sorted slice may be only the best CANDIDATES).
    lse_B = jnp.where(top_k > 0, jax.nn.logsumexp(vals_BxK, axis=-1), lse_full_B)
    cum_BxK = jnp.cumsum(jnp.exp(vals_BxK - lse_B[:, None]), axis=-1)
    drop_BxK = jnp.concatenate(
        [jnp.zeros_like(cum_BxK[:, :1], bool), cum_BxK[:, :-1] > top_p], axis=-1
    )
    return jnp.where((top_p < 1.0) & drop_BxK, -jnp.inf, vals_BxK)


def _sample(logits_BxV, recent_ids_BxW, recent_valid_BxW, params, key) -> jax.Array:
    B, V = logits_BxV.shape
    base_BxV = logits_BxV.astype(jnp.float32)
    x_BxV = base_BxV / params["temperature"]  # x / 1.0 is exact, so no branch is needed
    counts_BxV = jnp.zeros((B, V), jnp.int32).at[
        jnp.arange(B)[:, None], recent_ids_BxW].add(recent_valid_BxW.astype(jnp.int32))
    penalty = params["repetition_penalty"]
    penalised = jnp.where(x_BxV > 0, x_BxV / penalty, x_BxV * penalty)
    x_BxV = jnp.where(counts_BxV > 0, penalised, x_BxV)
    top_k, top_p = params["top_k"], params["top_p"]
    lse_full_B = jax.nn.logsumexp(x_BxV, axis=-1)

    # A full sort of 50304 logits costs ~9 ms per row on CPU; lax.top_k of the best
    # CANDIDATES costs ~0.2 ms. The short list is exact whenever 1 <= top_k <= CANDIDATES
    # (up to ties at the k-th value beyond the list), or without top-k when the best
    # CANDIDATES already hold more than top_p of the mass (top-p drops everything after).
    n_cand = min(CANDIDATES, V)
    cand_vals_BxK, cand_ids_BxK = jax.lax.top_k(x_BxV, n_cand)
    cand_mass_B = jnp.exp(jax.nn.logsumexp(cand_vals_BxK, axis=-1) - lse_full_B)
    short_ok = ((top_k >= 1) & (top_k <= n_cand)) | ((top_k == 0) & (cand_mass_B > top_p))
    plain = (top_k == 0) & (top_p >= 1.0)
    path = jnp.where(jnp.all(short_ok), 0, jnp.where(plain, 1, 2))

    def short_list():
        vals = _filter_sorted(cand_vals_BxK, lse_full_B, top_k, top_p)
        pick_B = jax.random.categorical(key, vals, axis=-1)
        tok_B = jnp.take_along_axis(cand_ids_BxK, pick_B[:, None], -1)[:, 0]
        return tok_B, jnp.isfinite(vals).any(-1)

    def unfiltered():
        return jax.random.categorical(key, x_BxV, axis=-1), jnp.isfinite(x_BxV).any(-1)

    def full_sort():
        order_BxV = jnp.argsort(-x_BxV, axis=-1, stable=True)
        vals = _filter_sorted(jnp.take_along_axis(x_BxV, order_BxV, -1), lse_full_B, top_k, top_p)
        pick_B = jax.random.categorical(key, vals, axis=-1)
        return jnp.take_along_axis(order_BxV, pick_B[:, None], -1)[:, 0], jnp.isfinite(vals).any(-1)

    tok_B, ok_B = jax.lax.switch(path, (short_list, unfiltered, full_sort))
    # Upstream: if filtering left nothing finite, sample from the unfiltered raw logits.
    return jax.lax.cond(
        jnp.all(ok_B),
        lambda: tok_B,
        lambda: jnp.where(ok_B, tok_B, jax.random.categorical(key, base_BxV, axis=-1)),
    ).astype(jnp.int32)


def argmax_first(x_BxV: jax.Array) -> jax.Array:
    """jnp.argmax (first index of the maximum), ~3x faster on CPU than its variadic reduce."""
    V = x_BxV.shape[-1]
    first_B = jnp.min(
        jnp.where(x_BxV == x_BxV.max(-1, keepdims=True), jnp.arange(V, dtype=jnp.int32), V), -1)
    return jnp.where(first_B < V, first_B, 0).astype(jnp.int32)  # a NaN row has no maximum


def next_token(logits_BxV, recent_ids_BxW, recent_valid_BxW, params, key) -> jax.Array:
    """One token per row: greedy if params["temperature"] <= 0, else filtered sampling."""
    return jax.lax.cond(
        params["temperature"] <= 0,
        lambda: argmax_first(logits_BxV),
        lambda: _sample(logits_BxV, recent_ids_BxW, recent_valid_BxW, params, key),
    )


# ----------------------------------------------------------------------------------------
# The jitted loop
# ----------------------------------------------------------------------------------------

def layers_scanned(scan_layers: bool | None, platform: str | None = None) -> bool:
    """`scan_layers` if given, else scanned unless the loop runs on CPU (`platform`, default
    the default backend): there the unrolled loop runs faster, elsewhere compile time rules."""
    if scan_layers is not None:
        return scan_layers
    return (platform or jax.default_backend()) != "cpu"


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (holds tracers)
class _Loop:
    """What every step of the generation loop reads: the model, the prompt rows, the settings."""
    model: Any
    layers: Any  # unrolled: per-layer weight buffers, cut once outside the loop; scanned: None
    prompt_width: int  # P; slot P - 1 holds each row's last prompt id
    prompt_len_B: jax.Array
    pad_len_B: jax.Array  # row b's prompt starts at slot pad_len_B[b]
    key_valid_BxS: jax.Array  # the slots that hold a row's ids, not its left padding
    hist_offset: int  # hist index of slot 0, so look-back windows are plain slices from step 0
    max_new_tokens: jax.Array
    sampling: dict[str, jax.Array]
    stop_ids_K: jax.Array
    rng_key: jax.Array
    repeat_guard: jax.Array
    penalty_window: int
    greedy: bool

    def decode(self, tokens_BxT, slot_T, cache, cache_index):
        """The model's decode of tokens fed at cache slots slot_T (left padding not counted)."""
        positions_BxT = jnp.maximum(slot_T[None, :] - self.pad_len_B[:, None], 0)
        return self.model.decode(
            tokens_BxT, positions_BxT, cache, cache_index, self.key_valid_BxS, self.layers)

    def window(self, hist_BxH, end, width):
        """The `width` ids before slot `end`, and which of them are the row's (not padding)."""
        ids_BxW = jax.lax.dynamic_slice_in_dim(
            hist_BxH, self.hist_offset + end - width, width, axis=1)
        valid_BxW = (end - width + jnp.arange(width))[None, :] >= self.pad_len_B[:, None]
        return ids_BxW, valid_BxW

    def prefill(self, prompt_BxP, slots_S, cache):
        """The cache after all prompt ids but the last (the loop's first step feeds that one)."""
        # Its logits are unused, so XLA drops the lm_head matmul over P-1 positions.
        _, cache = self.decode(prompt_BxP[:, :-1], slots_S[:self.prompt_width - 1], cache, 0)
        return cache

    def running(self, carry):
        n, _, _, _, _, _, _, done_B = carry
        return (n < self.max_new_tokens) & ~jnp.all(done_B)

    def pick(self, logits_BxTxV, hist_BxH, slot, n):
        """Every row's next id from the logits of the id fed at `slot`."""
        recent_ids, recent_valid = self.window(hist_BxH, slot + 1, self.penalty_window)
        # Greedy is its own program: the sampler was most of the TPU compile time (docstring).
        return argmax_first(logits_BxTxV[:, 0]) if self.greedy else next_token(
            logits_BxTxV[:, 0], recent_ids, recent_valid, self.sampling,
            jax.random.fold_in(self.rng_key, n))

    def guard_hits(self, hist_BxH, slot, num_B, done_B):
        """Rows the repeat guard stops now (module docstring)."""
        R = REPEAT_GUARD_SPAN
        last_Bx2R, _ = self.window(hist_BxH, slot + 1, 2 * R)
        repeats_B = jnp.all(last_Bx2R[:, :R] == last_Bx2R[:, R:], axis=-1)
        long_B = self.prompt_len_B + num_B > 2 * R
        return self.repeat_guard & ~done_B & repeats_B & long_B

    def step(self, carry):
        """Feeds one id per row, then records the row's next id or why it stopped."""
        n, feed_B, cache, hist_BxH, out_BxN, num_B, reason_B, done_B = carry
        slot = self.prompt_width - 1 + n  # where feed_B goes; the id picked now goes to slot + 1
        logits_BxTxV, cache = self.decode(feed_B[:, None], slot[None], cache, slot)
        tok_B = self.pick(logits_BxTxV, hist_BxH, slot, n)
        guard_B = self.guard_hits(hist_BxH, slot, num_B, done_B)
        active_B = ~done_B & ~guard_B
        stop_B = active_B & jnp.isin(tok_B, self.stop_ids_K)
        feed_B = jnp.where(active_B, tok_B, 0)
        out_BxN = out_BxN.at[:, n].set(jnp.where(active_B, tok_B, PAD_ID))
        hist_BxH = jax.lax.dynamic_update_slice_in_dim(
            hist_BxH, feed_B[:, None], self.hist_offset + slot + 1, axis=1)
        reason_B = jnp.where(guard_B, _REPEAT, jnp.where(stop_B, _STOP_TOKEN, reason_B))
        return (n + 1, feed_B, cache, hist_BxH, out_BxN, num_B + active_B,
                reason_B, done_B | guard_B | stop_B)


def _generate(
    graphdef,
    state,
    prompt_BxP: jax.Array,
    prompt_len_B: jax.Array,
    max_new_tokens: jax.Array,
    sampling: dict[str, jax.Array],
    stop_ids_K: jax.Array,
    rng_key: jax.Array,
    repeat_guard: jax.Array,
    *,
    max_new_cap: int,
    penalty_window: int,
    scan_layers: bool | None = None,
    greedy: bool = False,
):
    model = nnx.merge(graphdef, state)
    B, P = prompt_BxP.shape
    S = P + max_new_cap
    OFF = max(penalty_window, 2 * REPEAT_GUARD_SPAN)  # _Loop.hist_offset
    pad_len_B = (P - prompt_len_B).astype(jnp.int32)
    slots_S = jnp.arange(S, dtype=jnp.int32)
    key_valid_BxS = slots_S[None, :] >= pad_len_B[:, None]
    hist_BxH = jnp.zeros((B, OFF + S), jnp.int32).at[:, OFF:OFF + P].set(prompt_BxP)
    scanned = layers_scanned(scan_layers)
    loop = _Loop(model, None if scanned else model.layer_params(), P, prompt_len_B, pad_len_B,
                 key_valid_BxS, OFF, max_new_tokens, sampling, stop_ids_K, rng_key, repeat_guard,
                 penalty_window, greedy)
    cache = loop.prefill(prompt_BxP, slots_S, model.init_cache(B, S, stacked=scanned))
    carry = (
        jnp.int32(0),
        prompt_BxP[:, -1],
        cache,
        hist_BxH,
        jnp.full((B, max_new_cap), PAD_ID, jnp.int32),
        jnp.zeros((B,), jnp.int32),
        jnp.full((B,), _LENGTH, jnp.int32),
        jnp.zeros((B,), bool),
    )
    _, _, _, _, out_BxN, num_B, reason_B, _ = jax.lax.while_loop(loop.running, loop.step, carry)
    return out_BxN, num_B, reason_B


_generate_jit = jax.jit(
    _generate, static_argnums=(0,),
    static_argnames=("max_new_cap", "penalty_window", "scan_layers", "greedy"),
)


def generate_ids(
    graphdef,
    state,
    prompt_ids_BxP: jax.Array,
    prompt_len_B: jax.Array,
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    stop_ids: Sequence[int],
    rng_key: jax.Array | None = None,
    penalty_window: int = PENALTY_WINDOW,
    repeat_guard: bool = True,
    scan_layers: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The pure core: left-padded prompts in, (out_ids_BxN, num_generated_B, reason_B) out.

    `prompt_ids_BxP` must be left-padded (row b's ids in the last prompt_len_B[b] columns,
    P a bucket from `prompt_bucket`), with prompt_len_B[b] + max_new_tokens <= block_size.
    N = `new_tokens_bucket(max_new_tokens)`; columns past num_generated_B[b] are PAD_ID.
    reason_B indexes STOP_REASONS. Compiled once per (B, P, N) (and per 4 more stop ids).
    `scan_layers`: the layer loop's form (module docstring).
    """
    stops = sorted({int(t) for t in stop_ids})
    # Padded with PAD_ID (never generated) to a multiple of STOP_SLOTS so that another stop
    # set of similar size reuses the compiled loop.
    width = max(STOP_SLOTS, -(-len(stops) // STOP_SLOTS) * STOP_SLOTS)
    stops += [PAD_ID] * (width - len(stops))
    return _generate_jit(
        graphdef,
        state,
        jnp.asarray(prompt_ids_BxP, jnp.int32),
        jnp.asarray(prompt_len_B, jnp.int32),
        jnp.int32(max_new_tokens),
        sampling.arrays(),
        jnp.asarray(stops, jnp.int32),
        jax.random.key(0) if rng_key is None else rng_key,
        jnp.bool_(repeat_guard),
        max_new_cap=new_tokens_bucket(max_new_tokens),
        penalty_window=penalty_window,
        scan_layers=layers_scanned(scan_layers),  # resolved: None and its value share a compile
        greedy=sampling.greedy,
    )


def compiled_variants() -> int:
    """How many (shape, static-argument) variants of the generation loop are compiled."""
    return _generate_jit._cache_size()


# ----------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Generation:
    prompt: str  # as given
    completion: str  # decoded from the new ids (not a slice of text); ends with the stop tag if any
    ids: list[int]  # new ids, the stop id included
    prompt_ids: list[int]  # the ids actually fed (after any left cut)
    stopped_by: str  # one of STOP_REASONS
    text: str  # prompt ids + new ids decoded together, as upstream generate.py prints them


def _module_of(model: Any) -> nnx.Module:
    return getattr(model, "module", model)


def block_size_of(model: Any) -> int:
    """The context length of a GPT module or of anything with `.module` (a loaded model)."""
    return _module_of(model).config.block_size


def default_stop_ids(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.id_of(name) for name in ("myPT_assistant_close", "myPT_eot")
            if name in tokenizer.ids_by_name]


def generate_tokens(
    model: Any,
    prompts_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    stop_ids: Sequence[int] = (),
    rng_key: jax.Array | None = None,
    repeat_guard: bool = True,
    scan_layers: bool | None = None,
) -> list[tuple[list[int], list[int], str]]:
    """(prompt ids fed, new ids, stopped_by) per prompt, all prompts in one batch."""
    module = _module_of(model)
    block_size = module.config.block_size
    fitted = fit_prompts(prompts_ids, block_size=block_size, max_new_tokens=max_new_tokens)
    width = prompt_bucket(max(len(ids) for ids in fitted), block_size)
    prompt_BxP, lens_B = left_pad(fitted, width)
    graphdef, state = nnx.split(module)
    out_BxN, num_B, reason_B = jax.device_get(generate_ids(
        graphdef, state, prompt_BxP, lens_B, max_new_tokens=max_new_tokens, sampling=sampling,
        stop_ids=stop_ids, rng_key=rng_key, repeat_guard=repeat_guard, scan_layers=scan_layers,
    ))
    return [
        (ids, out_BxN[b, :num_B[b]].tolist(), STOP_REASONS[reason_B[b]])
        for b, ids in enumerate(fitted)
    ]


def generate_text(
    model: Any,
    tokenizer: Tokenizer | None,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    preset: str | None = None,
    seed: int = 0,
    rng_key: jax.Array | None = None,
    stop_ids: Sequence[int] | None = None,
    use_default_stop_ids: bool = True,
    repeat_guard: bool = True,
    scan_layers: bool | None = None,
) -> list[Generation]:
    """Generates a completion for every prompt, all in one batch.

    Sampling defaults are the upstream `GPT.generate` ones (0.8, 50, 0.95, 1.1); a preset
    replaces them and explicit arguments override the preset. The key is `rng_key` or
    `jax.random.key(seed)`. Stop ids = the tokenizer's assistant-close and eot ids (unless
    `use_default_stop_ids=False`) plus `stop_ids`. `max_new_tokens=None`: 100, or fewer when
    block_size leaves less after the longest prompt (a warning says so). Prompts that do not
    fit with a given max_new_tokens are cut from the left (see the module docstring).
    `model` is a GPT module or any object with `.module` (and `.tokenizer` when
    `tokenizer` is None). `scan_layers`: the layer loop's form (module docstring).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if tokenizer is None:
        tokenizer = model.tokenizer
    params = get_preset(preset) if preset else SamplingParams()
    overrides = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "repetition_penalty": repetition_penalty}
    params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    stops = set(stop_ids or ())
    if use_default_stop_ids:
        stops |= set(default_stop_ids(tokenizer))
    prompts_ids = [tokenizer.encode(p) for p in prompts]
    if max_new_tokens is None:
        max_new_tokens, note = fit_new_tokens(
            [len(ids) for ids in prompts_ids], block_size_of(model), DEFAULT_MAX_NEW_TOKENS)
        if note:
            warnings.warn(note, stacklevel=2)
    results = generate_tokens(
        model, prompts_ids, max_new_tokens=max_new_tokens,
        sampling=params, stop_ids=sorted(stops),
        rng_key=jax.random.key(seed) if rng_key is None else rng_key, repeat_guard=repeat_guard,
        scan_layers=scan_layers,
    )
    return [
        Generation(prompt, tokenizer.decode(new_ids), new_ids, fed, reason,
                   tokenizer.decode(fed + new_ids))
        for prompt, (fed, new_ids, reason) in zip(prompts, results, strict=True)
    ]
