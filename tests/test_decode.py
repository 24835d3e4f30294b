"""Jitted KV-cache generation against a full-forward reference, sampling semantics, the CLI."""

from __future__ import annotations

import argparse
import io
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mypt_jax import generate
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.decoding import decode
from mypt_jax.model import GPT, ModelConfig

BLOCK = 128
GENERATIONS = {
    "seed": dict(pos_encoding="learned", mlp_type="gelu", norm_type="layernorm"),
    "head": dict(pos_encoding="rope", mlp_type="swiglu", norm_type="rmsnorm"),
}


def random_model(generation: str, vocab: int = 512, n_embd: int = 32, seed: int = 1) -> GPT:
    """Large random weights, so greedy output changes from step to step (default init repeats)."""
    cfg = ModelConfig(block_size=BLOCK, vocab_size=vocab, n_embd=n_embd, n_head=4, n_layer=2,
                      dropout=0.0, **GENERATIONS[generation])
    model = GPT(cfg, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed), 64))

    def redraw(path, x):
        name, noise = path[-1].key, jax.random.normal(next(keys), x.shape)
        if name in ("wte", "wpe"):
            return noise
        if name.endswith("scale"):
            return 1 + 0.1 * noise
        if name.endswith("bias"):
            return 0.1 * noise
        return noise * 2 / np.sqrt(x.shape[-2])

    params.replace_by_pure_dict(jax.tree_util.tree_map_with_path(redraw, params.to_pure_dict()))
    nnx.update(model, params)
    return model


@pytest.fixture(scope="module", params=sorted(GENERATIONS))
def model(request) -> GPT:
    return random_model(request.param)


@pytest.fixture(scope="module")
def seed_model() -> GPT:
    return random_model("seed")


_FORWARDS: dict[int, tuple[GPT, object]] = {}


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """No cache: a full causal forward over the whole sequence for every new token."""
    if id(model) not in _FORWARDS:
        _FORWARDS[id(model)] = (model, jax.jit(lambda ids: model(ids)))
    forward = _FORWARDS[id(model)][1]
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, BLOCK), np.int32)  # right padding cannot reach earlier positions
        padded[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(forward(padded)[0, len(seq) - 1])))
    return seq[len(prompt):]


PROMPTS = [[1, 2, 3], list(range(40, 57)), [5, 6, 7, 8, 9, 10, 11, 12, 13]]


def test_cached_greedy_equals_full_forward(model):
    results = decode.generate_tokens(model, PROMPTS, max_new_tokens=24, repeat_guard=False)
    for prompt, (fed, new_ids, reason) in zip(PROMPTS, results, strict=True):
        assert fed == prompt
        assert new_ids == reference_greedy(model, prompt, 24)
        assert reason == "length"
    assert len({tuple(r[1]) for r in results}) == 3  # the random model is not degenerate


def test_batched_equals_one_by_one(seed_model):
    batched = decode.generate_tokens(seed_model, PROMPTS, max_new_tokens=20, repeat_guard=False)
    for prompt, row in zip(PROMPTS, batched, strict=True):
        (alone,) = decode.generate_tokens(seed_model, [prompt], max_new_tokens=20, repeat_guard=False)
        assert alone == row


def test_each_row_stops_on_its_own_stop_id_and_keeps_it(seed_model):
    refs = [reference_greedy(seed_model, p, 20) for p in PROMPTS]
    stop = next(t for t in refs[0][2:] if t not in refs[1] and t not in refs[0][:2])
    results = decode.generate_tokens(
        seed_model, PROMPTS, max_new_tokens=20, stop_ids=[stop], repeat_guard=False)
    cut = refs[0].index(stop) + 1
    assert results[0][1] == refs[0][:cut] and results[0][2] == "stop_token"
    assert results[1][1] == refs[1] and results[1][2] == "length"
    if stop in refs[2]:
        assert results[2][1] == refs[2][:refs[2].index(stop) + 1]
    else:
        assert results[2][1] == refs[2]


def upstream_repeat_guard(prompt: list[int], ref: list[int]) -> list[int]:
    """The upstream rule, written out: before appending, stop if len > 64 and the last 32
    ids equal the 32 before them."""
    seq = list(prompt)
    for i, token in enumerate(ref):
        if len(seq) > 64 and seq[-32:] == seq[-64:-32]:
            return ref[:i]
        seq.append(token)
    return ref


@pytest.fixture(scope="module")
def default_init_model() -> GPT:
    cfg = ModelConfig(block_size=BLOCK, vocab_size=512, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
    return GPT(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(("prompt", "n"), [
    ([5, 6, 7, 8, 9], 100),  # default-init weights: greedy repeats one id until the guard fires
    ([3] + list(range(200, 232)) * 2, 60),  # the prompt alone repeats: nothing is generated
])
def test_repeat_guard_as_upstream(default_init_model, prompt, n):
    model = default_init_model
    ref = reference_greedy(model, prompt, n)
    expected = upstream_repeat_guard(prompt, ref)
    assert len(expected) < n, "the guard must fire for this test to mean anything"
    ((_, new_ids, reason),) = decode.generate_tokens(model, [prompt], max_new_tokens=n)
    assert new_ids == expected and reason == "repeat"
    ((_, new_ids, reason),) = decode.generate_tokens(
        model, [prompt], max_new_tokens=n, repeat_guard=False)
    assert new_ids == ref and reason == "length"


def test_same_bucket_does_not_recompile(seed_model):
    decode.generate_tokens(seed_model, [[1, 2, 3, 4, 5]], max_new_tokens=20)
    compiled = decode.compiled_variants()
    # Another prompt length in the same bucket (16), another max_new_tokens in the same
    # bucket (32), stop ids and repeat guard switch: all traced.
    decode.generate_tokens(seed_model, [list(range(100, 111))], max_new_tokens=30,
                           stop_ids=[7, 8], repeat_guard=False)
    assert decode.compiled_variants() == compiled
    # Sampling is the one other program (greedy leaves the sampler out); within it, other
    # sampling values and keys are traced.
    for sampling, key in [((0.9, 7, 0.5, 1.3), 3), ((0.5, 0, 1.0, 1.0), 4)]:
        decode.generate_tokens(seed_model, [list(range(100, 111))], max_new_tokens=30,
                               sampling=decode.SamplingParams(*sampling),
                               rng_key=jax.random.key(key))
        assert decode.compiled_variants() == compiled + 1
    decode.generate_tokens(seed_model, [list(range(40))], max_new_tokens=20)  # prompt bucket 64
    assert decode.compiled_variants() == compiled + 2


@pytest.mark.parametrize("sampling", [
    decode.SamplingParams(1.5, 0, 1.0, 1.0),  # unfiltered
    decode.SamplingParams(1.0, 50, 0.95, 1.1),  # short list of the best logits
    decode.SamplingParams(1.0, 400, 0.9, 1.2),  # k beyond the short list: full sort
])
def test_sampling_is_reproducible_from_the_key(seed_model, sampling):
    def run(seed):
        return decode.generate_tokens(seed_model, PROMPTS[:2], max_new_tokens=16, sampling=sampling,
                                      rng_key=jax.random.key(seed))

    first = run(0)
    assert run(0) == first
    assert run(1) != first
    assert all(0 <= t < 512 for _, ids, _ in first for t in ids)


# ----- next_token on hand-made logits -----

def _pick(logits, params: decode.SamplingParams, seed=0, recent=None, recent_valid=None):
    logits = jnp.asarray(logits, jnp.float32)
    B = logits.shape[0]
    recent = jnp.zeros((B, 1), jnp.int32) if recent is None else jnp.asarray(recent, jnp.int32)
    if recent_valid is None:
        recent_valid = jnp.zeros(recent.shape, bool) if params.repetition_penalty == 1.0 else \
            jnp.ones(recent.shape, bool)
    fn = jax.jit(decode.next_token)
    return np.asarray(fn(logits, recent, jnp.asarray(recent_valid), params.arrays(),
                         jax.random.key(seed)))


def test_greedy_takes_the_first_of_tied_maxima():
    logits = np.zeros((1, 1000), np.float32)
    logits[0, [7, 3, 900]] = 5.0
    assert _pick(logits, decode.GREEDY).tolist() == [3]


def test_top_k_keeps_only_the_k_best():
    logits = np.tile(np.linspace(0, 1, 1000, dtype=np.float32)[::-1], (400, 1))  # best = id 0
    assert set(_pick(logits, decode.SamplingParams(1.0, 1, 1.0, 1.0)).tolist()) == {0}
    assert set(_pick(logits, decode.SamplingParams(1.0, 2, 1.0, 1.0)).tolist()) == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    probs = np.array([0.5, 0.3, 0.15] + [0.05 / 997] * 997)
    logits = np.tile(np.log(probs).astype(np.float32), (400, 1))
    # cumulative 0.5, 0.8, 0.95: with p=0.7 the second token crosses p and is still kept
    assert set(_pick(logits, decode.SamplingParams(1.0, 0, 0.7, 1.0)).tolist()) == {0, 1}
    assert set(_pick(logits, decode.SamplingParams(1.0, 0, 0.4, 1.0)).tolist()) == {0}


def test_top_p_beyond_the_short_list_uses_the_whole_vocabulary():
    # Nearly flat: the nucleus for p=0.9 holds ~900 ids, far more than decode.CANDIDATES.
    logits = np.tile(-1e-4 * np.arange(1000, dtype=np.float32), (3000, 1))
    picked = _pick(logits, decode.SamplingParams(1.0, 0, 0.9, 1.0))
    assert len(set(picked.tolist())) > decode.CANDIDATES
    assert picked.max() < 905


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.full((1, 100), -10.0, np.float32)
    logits[0, :3] = [2.0, 1.9, -1.0]
    top1 = dict(temperature=1.0, top_k=1, top_p=1.0)
    # id 0 is recent: 2.0 / 1.5 = 1.33 < 1.9, so id 1 wins
    assert _pick(logits, decode.SamplingParams(**top1, repetition_penalty=1.5),
                 recent=[[0]]).tolist() == [1]
    # an invalid (padding) window entry does not count
    assert _pick(logits, decode.SamplingParams(**top1, repetition_penalty=1.5),
                 recent=[[0]], recent_valid=[[False]]).tolist() == [0]
    # negative logits are multiplied: -1.0 * 1.5 stays below the others only if penalised
    logits2 = np.full((1, 100), -10.0, np.float32)
    logits2[0, :2] = [-1.0, -1.2]
    assert _pick(logits2, decode.SamplingParams(**top1, repetition_penalty=1.5),
                 recent=[[0, 0]]).tolist() == [1]


def test_presets_are_the_upstream_values():
    table = {n: (p.temperature, p.top_k, p.top_p, p.repetition_penalty)
             for n, p in decode.PRESETS.items()}
    assert table == {
        "chat": (0.7, 50, 0.9, 1.1), "creative": (1.0, 100, 0.95, 1.2),
        "factual": (0.3, 10, 0.8, 1.0), "code": (0.2, 40, 0.95, 1.0),
        "deterministic": (0.0, 1, 1.0, 1.0),
    }
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        decode.get_preset("nope")


def test_generate_text_applies_presets_and_overrides(seed_model):
    chars = types.SimpleNamespace(  # a token map without tags: ids are code points mod 512
        encode=lambda text: [ord(c) % 512 for c in text], decode=lambda ids: ",".join(map(str, ids)),
        ids_by_name={})
    for kwargs, params in [
        (dict(preset="creative"), decode.SamplingParams(1.0, 100, 0.95, 1.2)),
        (dict(preset="creative", top_k=3), decode.SamplingParams(1.0, 3, 0.95, 1.2)),
        (dict(preset="deterministic", temperature=0.9), decode.SamplingParams(0.9, 1, 1.0, 1.0)),
        (dict(), decode.SamplingParams(0.8, 50, 0.95, 1.1)),  # upstream GPT.generate defaults
    ]:
        (gen,) = decode.generate_text(seed_model, chars, ["abc"], max_new_tokens=12, seed=5, **kwargs)
        ((_, expected, _),) = decode.generate_tokens(
            seed_model, [[97, 98, 99]], max_new_tokens=12, sampling=params,
            rng_key=jax.random.key(5))
        assert gen.ids == expected, kwargs
        assert gen.completion == ",".join(map(str, expected))


# ----- over-long prompts -----

def test_prompt_too_long_for_max_new_tokens_is_cut_from_the_left(seed_model):
    prompt = [int(i) for i in np.random.default_rng(0).integers(0, 512, 120)]
    with pytest.warns(UserWarning, match="dropped the first 12 ids"):
        ((fed, new_ids, _),) = decode.generate_tokens(
            seed_model, [prompt], max_new_tokens=20, repeat_guard=False)
    assert fed == prompt[12:]
    assert len(fed) + 20 == BLOCK
    assert new_ids == reference_greedy(seed_model, prompt[12:], 20)


def test_max_new_tokens_must_leave_room_for_a_prompt(seed_model):
    with pytest.raises(ValueError, match="block_size is 128"):
        decode.generate_tokens(seed_model, [[1, 2]], max_new_tokens=BLOCK)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decode.generate_tokens(seed_model, [[1, 2]], max_new_tokens=0)


# ----- text level, with the real token map -----

@pytest.fixture(scope="module")
def text_model() -> GPT:
    cfg = ModelConfig(block_size=64, vocab_size=50304, n_embd=16, n_head=2, n_layer=1, dropout=0.0)
    return GPT(cfg, rngs=nnx.Rngs(0))


def _force_token(model: GPT, token_id: int | None) -> None:
    bias = jnp.zeros_like(model.lm_head_bias[...])
    model.lm_head_bias[...] = bias if token_id is None else bias.at[token_id].set(100.0)


def test_generate_text_stops_on_the_default_stop_tags(text_model):
    tok = Tokenizer()
    for name in ("myPT_assistant_close", "myPT_eot"):
        _force_token(text_model, tok.id_of(name))
        prompts = ["<myPT_user>Sag Grüße.</myPT_user><myPT_assistant>", "Hi"]
        gens = decode.generate_text(text_model, tok, prompts, max_new_tokens=10, temperature=0)
        for prompt, gen in zip(prompts, gens, strict=True):
            assert gen.ids == [tok.id_of(name)]
            assert gen.stopped_by == "stop_token"
            assert gen.completion == tok.tag(name)
            assert gen.text == prompt + tok.tag(name)
            assert gen.prompt_ids == tok.encode(prompt)


def test_generate_text_without_stop_runs_to_max_new_tokens(text_model):
    tok = Tokenizer()
    ok_id = tok.encode_ordinary("OK")[0]
    _force_token(text_model, ok_id)
    (gen,) = decode.generate_text(text_model, tok, ["Say OK."], max_new_tokens=5, preset="factual",
                                  use_default_stop_ids=False)
    assert gen.ids == [ok_id] * 5 and gen.completion == "OK" * 5 and gen.stopped_by == "length"
    (gen,) = decode.generate_text(text_model, tok, ["Say OK."], max_new_tokens=5, temperature=0,
                                  stop_ids=[ok_id])
    assert gen.ids == [ok_id] and gen.stopped_by == "stop_token"
    _force_token(text_model, None)


def test_fit_new_tokens_caps_the_default_to_the_block():
    assert decode.fit_new_tokens([28, 20], 512, 100) == (100, None)
    n, note = decode.fit_new_tokens([28, 20], 64, 100)
    assert n == 36 and note == ("max_new_tokens not given: using 36, what block_size 64 leaves "
                                "after the longest prompt (28 ids), instead of the default 100")
    assert decode.fit_new_tokens([70], 64, 100)[0] == 1  # fit_prompts then cuts the prompt
    assert decode.fit_new_tokens([0], 64, 100)[0] == 63  # an empty prompt is fed as one id
    assert decode.fit_new_tokens([5], 64, 8, name="eval_max_new_tokens") == (8, None)


def test_generate_text_default_fits_the_block_and_says_so(text_model):
    tok = Tokenizer()
    ok_id = tok.encode_ordinary("OK")[0]
    _force_token(text_model, ok_id)
    prompt = "<myPT_user>Say OK.</myPT_user><myPT_assistant>"
    room = text_model.config.block_size - len(tok.encode(prompt))
    with pytest.warns(UserWarning, match=f"max_new_tokens not given: using {room}, what block_size 64"):
        (gen,) = decode.generate_text(text_model, tok, [prompt], temperature=0,
                                      use_default_stop_ids=False)
    assert len(gen.ids) == room and gen.stopped_by == "length"
    with pytest.raises(ValueError, match="max_new_tokens 100 leaves no room"):  # given: must fit
        decode.generate_text(text_model, tok, [prompt], max_new_tokens=100)
    _force_token(text_model, None)


# ----- CLI -----

def test_unescape_turns_only_three_escapes_into_characters():
    assert generate.unescape("Sag Grüße.") == "Sag Grüße."
    assert generate.unescape(r"a\nb\tc") == "a\nb\tc"
    assert generate.unescape(r"keep \\n and \u00fc") == "keep \\n and \\u00fc"


def test_cli_defaults_and_model_flag_spellings():
    parser = generate.build_parser()
    args = parser.parse_args([])
    assert (args.model, args.prompt, args.max_new_tokens) == ("default", "Die Nacht", None)
    assert (args.temperature, args.top_k, args.top_p, args.repetition_penalty) == (0.8, 50, 0.95, 1.1)
    assert parser.parse_args(["--model", "m1"]).model == "m1"
    assert parser.parse_args(["--model_name", "m2"]).model == "m2"


def test_cli_sampling_precedence():
    parser = generate.build_parser()

    def sampling(*argv):
        p = generate.sampling_from_args(parser.parse_args(list(argv)))
        return (p.temperature, p.top_k, p.top_p, p.repetition_penalty)

    assert sampling("--temperature", "0.5", "--top_k", "3") == (0.5, 3, 0.95, 1.1)
    assert sampling("--temperature", "0.5", "--preset", "code") == (0.2, 40, 0.95, 1.0)
    assert sampling("--preset", "chat", "--mode", "creative") == (1.0, 100, 0.95, 1.2)
    assert sampling("--mode", "qa") == (0.3, 10, 0.8, 1.0)


def test_cli_run_keeps_non_ascii_prompts(text_model, tmp_path):
    tok = Tokenizer()
    _force_token(text_model, tok.assistant_close_id)
    loaded = types.SimpleNamespace(module=text_model, config=text_model.config, tokenizer=tok)
    prompt = "<myPT_user>Sag Grüße.\\n</myPT_user><myPT_assistant>"
    argv = ["--model", str(tmp_path), "--prompt", prompt, "--temperature", "0",
            "--max_new_tokens", "4"]
    out, err = io.StringIO(), io.StringIO()
    gen = generate.run(generate.build_parser().parse_args(argv), out=out, err=err,
                       load=lambda path, **kw: loaded)
    expected_prompt = "<myPT_user>Sag Grüße.\n</myPT_user><myPT_assistant>"
    assert gen.prompt == expected_prompt
    assert out.getvalue() == f"Prompt: {expected_prompt}\n\n{expected_prompt}</myPT_assistant>\n"
    out = io.StringIO()
    generate.run(generate.build_parser().parse_args(argv + ["--completion_only"]), out=out, err=err,
                 load=lambda path, **kw: loaded)
    assert out.getvalue() == "</myPT_assistant>\n"
    err = io.StringIO()  # no --max_new_tokens: the default 100 does not fit block 64
    generate.run(generate.build_parser().parse_args(argv[:-2]), out=out, err=err,
                 load=lambda path, **kw: loaded)
    room = 64 - len(gen.prompt_ids)
    assert f"max_new_tokens not given: using {room}, what block_size 64" in err.getvalue()
    assert f"generating: max_new_tokens={room} " in err.getvalue()
    _force_token(text_model, None)


def test_cli_names_both_places_it_looked_for_a_missing_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither nope nor checkpoints/nope exists"):
        generate.resolve_model_path("nope")
    (tmp_path / "checkpoints" / "m").mkdir(parents=True)
    assert generate.resolve_model_path("m") == tmp_path.joinpath("checkpoints", "m").relative_to(
        tmp_path)
    assert generate.main(["--model", "nope"]) == 2


def test_sampling_params_from_namespace_without_preset():
    ns = argparse.Namespace(mode="basic", preset=None, temperature=0.0, top_k=1, top_p=1.0,
                            repetition_penalty=1.0)
    assert generate.sampling_from_args(ns).greedy


def test_loaded_model_generate_matches_library(tmp_path):
    from flax import nnx

    import mypt_jax
    from mypt_jax.data.tokenizer import Tokenizer
    from mypt_jax.decoding import decode
    from mypt_jax.interop import model_io
    from mypt_jax.model import GPT, ModelConfig

    config = ModelConfig(block_size=64, n_embd=32, n_head=2, n_layer=1, dropout=0.0)
    module = GPT(config, rngs=nnx.Rngs(3))
    model_io.save_model(tmp_path / "m", module, config, Tokenizer())
    loaded = mypt_jax.load(tmp_path / "m")
    prompt = "<myPT_user>Say Hello.</myPT_user><myPT_assistant>"
    (got,) = loaded.generate(prompt, max_new_tokens=8, temperature=0)
    (want,) = decode.generate_text(module, Tokenizer(), [prompt], max_new_tokens=8, temperature=0)
    assert got.ids == want.ids and got.completion == want.completion
