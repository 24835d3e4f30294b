"""The scanned layer loop of decoding (stacked weights and cache) against the unrolled one."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mypt_jax.decoding import decode
from mypt_jax.model import GPT, ModelConfig
from tests.test_decode import PROMPTS, random_model
from tests.test_model import PROMPT_IDS, torch_and_jax


def _both_forms(model: GPT, prompts, **kwargs) -> list:
    """generate_tokens with the unrolled and with the scanned layer loop."""
    return [decode.generate_tokens(model, prompts, scan_layers=scan, **kwargs)
            for scan in (False, True)]


@pytest.mark.parametrize("arch", ["seed", "head"])
def test_scanned_greedy_equals_unrolled_and_upstream(arch):
    ref, model, _ = torch_and_jax(arch, seed=2)
    prompts = [PROMPT_IDS, PROMPT_IDS[5:16]]  # 25 and 11 ids: the second row is left-padded
    unrolled, scanned = _both_forms(model, prompts, max_new_tokens=24, repeat_guard=False)
    assert scanned == unrolled
    for prompt, (fed, new_ids, reason) in zip(prompts, scanned, strict=True):
        assert fed == prompt and reason == "length"
        assert new_ids == ref.greedy(prompt, 24)  # the upstream PyTorch model, no cache
    # The weights do not make greedy repeat one id, nor give both rows the same ids.
    assert scanned[0][1] != scanned[1][1] and all(len(set(ids)) > 1 for _, ids, _ in scanned)


@pytest.mark.slow
@pytest.mark.parametrize("generation", ["seed", "head"])
def test_scanned_sampling_equals_unrolled_for_a_fixed_key(generation):
    model = random_model(generation)
    sampling = decode.SamplingParams(1.0, 50, 0.95, 1.1)
    unrolled, scanned = _both_forms(model, PROMPTS, max_new_tokens=20, sampling=sampling,
                                    rng_key=jax.random.key(4))
    assert scanned == unrolled
    # The draws are random (another key, other ids), so equality is not greedy's.
    other = decode.generate_tokens(model, PROMPTS, max_new_tokens=20, sampling=sampling,
                                   rng_key=jax.random.key(5), scan_layers=True)
    assert other != scanned


def test_stacked_cache_holds_the_per_layer_caches_and_logits():
    model = random_model("head")
    B, S, P = 2, 24, 9
    tokens = np.arange(B * P, dtype=np.int32).reshape(B, P) % 500
    positions = np.broadcast_to(np.arange(P, dtype=np.int32), (B, P))
    key_valid = np.ones((B, S), bool)

    def run(stacked: bool):
        decode_fn = jax.jit(lambda tok, pos, cache, i: model.decode(tok, pos, cache, i, key_valid))
        logits, cache = decode_fn(tokens, positions, model.init_cache(B, S, stacked=stacked), 0)
        for step in range(3):  # then one token at a time, as the generation loop does
            logits, cache = decode_fn(tokens[:, step:step + 1], positions[:, :1] + P + step,
                                      cache, P + step)
        return np.asarray(logits), cache

    logits_u, cache_u = run(False)
    logits_s, cache_s = run(True)
    assert not cache_u.stacked and cache_s.stacked and cache_s.max_len == cache_u.max_len == S
    assert cache_s.k_layers.shape == (model.config.n_layer, B, 4, S, 8)
    np.testing.assert_allclose(logits_s, logits_u, rtol=0, atol=1e-5)
    for stacked, per_layer in ((cache_s.k_layers, cache_u.k_layers),
                               (cache_s.v_layers, cache_u.v_layers)):
        np.testing.assert_allclose(np.asarray(stacked), np.stack(per_layer), rtol=0, atol=1e-5)
        assert np.abs(np.asarray(stacked)[:, :, :, P + 3:]).max() == 0  # unwritten slots


def _compiled_dots(n_layer: int, scan_layers: bool) -> int:
    """dot ops in the compiled generation program of an n_layer model.

    Compiled, not lowered: the lowered text keeps a scan's body once as a function even with
    `unroll=True`; the compiled program has it inlined as many times as it runs unrolled.
    """
    cfg = ModelConfig(block_size=64, vocab_size=512, n_embd=32, n_head=4, n_layer=n_layer,
                      dropout=0.0)
    graphdef, state = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)))
    text = decode._generate_jit.lower(
        graphdef, state, jnp.zeros((2, 16), jnp.int32), jnp.array([5, 16], jnp.int32),
        jnp.int32(8), decode.GREEDY.arrays(), jnp.zeros((4,), jnp.int32), jax.random.key(0),
        jnp.bool_(True), max_new_cap=16, penalty_window=decode.PENALTY_WINDOW,
        scan_layers=scan_layers,
    ).compile().as_text()
    assert " while(" in text
    return len(re.findall(r" dot\(", text))


def test_scanned_program_holds_one_layer_whatever_the_depth():
    # One layer in the prefill's scan and one in the loop body's, each of 6 dots (qkv, q.k,
    # p.v, proj, two MLP), and the head; unrolled, the 4 layers would hold 2 * 4 * 6 dots.
    assert 2 * 6 <= _compiled_dots(4, scan_layers=True) <= 2 * 6 + 2


def test_automatic_form_is_unrolled_on_cpu_and_scanned_elsewhere():
    assert decode.layers_scanned(None, "cpu") is False
    assert decode.layers_scanned(None, "tpu") is True
    assert decode.layers_scanned(None, "cuda") is True
    assert decode.layers_scanned(True, "cpu") is True
    assert decode.layers_scanned(False, "tpu") is False
    assert decode.layers_scanned(None) is (jax.default_backend() != "cpu")
