"""The eval-prompt decode's weights: gathered over fsdp/data where that copy fits beside the
train state, else left in the training layout; the run's evals and the preflight agree."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mypt_jax.decoding import decode
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import device_memory as dm
from mypt_jax.parallel import sharding
from mypt_jax.training.compilation import compile_plan
from mypt_jax.training.evals import decode_layout as layout_lib
from mypt_jax.training.evals import evaluator as evaluator_lib
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import train_step as ts

GIB, MIB = 2**30, 2**20
PROMPTS = "configs/sft_eval/phase3a1_alpha_test_prompts.json"


def _fsdp8(config):
    """`config` resolved for all 8 simulated devices on one fsdp axis, and its mesh."""
    config.mesh_data, config.mesh_fsdp = 1, -1
    r = cfg_lib.resolve(config, "unused", num_devices=8, process_count=1, read_files=False)
    return r, cfg_lib.mesh_for(r, jax.devices()[:8])


def _tiny_fsdp8():
    from configs import cpu_tiny

    c = cpu_tiny.get_config()
    c.eval_prompts_file = PROMPTS
    return _fsdp8(c)


def _splits_fsdp(spec) -> bool:
    return any(a == "fsdp" or (isinstance(a, tuple) and "fsdp" in a) for a in spec)


def test_gather_only_where_the_copy_fits_beside_the_state_with_headroom():
    fits = layout_lib.gather_fits
    # 9 GiB of 10 is the most the state, the copy and the cache may use (HEADROOM keeps 10%).
    assert fits(4 * GIB, 4 * GIB, GIB, 10 * GIB)
    assert not fits(4 * GIB, 4 * GIB, GIB + 1, 10 * GIB)
    assert not fits(3 * GIB, 12 * GIB, 0, 16 * GIB)
    assert fits(0, 20 * GIB, 0, 16 * GIB)  # nothing split over fsdp/data: nothing to gather
    assert fits(100 * GIB, 100 * GIB, 0, None)  # CPU reports no limit: gathered, as always


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the suite's 8 simulated devices")
def test_the_750M_model_gathers_on_16_GiB_chips_not_on_4():
    from configs import phase3a1_alpha

    r, mesh = _fsdp8(phase3a1_alpha.get_config())
    roomy = layout_lib.plan(r, mesh, 6, 16 * GIB)
    # The float32 weights whole (~0.69 B parameters) beside a train state split 8 ways:
    # weights and two AdamW moments, an eighth each.
    assert 2.7e9 < roomy.gathered_bytes < 2.9e9
    assert roomy.state_bytes == pytest.approx(3 * roomy.gathered_bytes / 8, rel=0.02)
    assert roomy.gather and roomy.layout == "gathered"
    tight = layout_lib.plan(r, mesh, 6, 4 * GIB)
    assert not tight.gather and tight.layout == "sharded"
    assert "FSDP-sharded" in tight.describe() and "4.00 GiB" in tight.describe()


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the suite's 8 simulated devices")
def test_evaluator_decodes_in_the_training_layout_where_the_copy_does_not_fit(monkeypatch):
    r, mesh = _tiny_fsdp8()
    mdef, params = ts.init_model(r.model_config, mesh, seed=0)
    specs, printed = [], []

    def fake_generate(model, tokenizer, eval_prompts, max_new_tokens):
        specs.append([x.sharding.spec for x in jax.tree.leaves(nnx.state(model, nnx.Param))])
        return []

    monkeypatch.setattr(evaluator_lib, "generate", fake_generate)
    writer = types.SimpleNamespace(print=printed.append)

    def evaluator():
        return evaluator_lib.Evaluator(r, mdef, mesh, writer, None, {},
                                       evaluator_lib.load_eval_prompts(PROMPTS), None, None)

    # The tiny model's weights are ~13 MiB whole, its train state ~5 MiB a device: a gathered
    # copy fits 32 MiB (with headroom), not 16.
    monkeypatch.setattr(dm, "device_capacity", lambda device: 16 * MIB)
    tight = evaluator()
    tight.generations(params)
    tight.generations(params)
    assert any(_splits_fsdp(s) for s in specs[-1])  # the training layout, as given
    assert len(printed) == 1 and "FSDP-sharded" in printed[0]  # said once
    for capacity in (32 * MIB, None):  # a chip with room; CPU (no limit)
        monkeypatch.setattr(dm, "device_capacity", lambda device, c=capacity: c)
        evaluator().generations(params)
        assert not any(_splits_fsdp(s) for s in specs[-1])  # gathered
    assert len(printed) == 1


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the suite's 8 simulated devices")
def test_the_sharded_decode_gives_the_gathered_ids():
    mc = ModelConfig(block_size=64, vocab_size=512, n_embd=64, n_head=4, n_layer=2, dropout=0.0)
    mesh = sharding.make_mesh((1, 8, 1))
    mdef, params = ts.init_model(mc, mesh, seed=0)
    prompt_BxP = jax.random.randint(jax.random.key(1), (2, 16), 0, 512)

    def ids(gather):
        weights = layout_lib.decode_layout(params, mesh, gather)
        graphdef, state = nnx.split(mdef.merge(weights))
        out_BxN, num_B, _ = decode.generate_ids(graphdef, state, prompt_BxP,
                                                jnp.array([16, 16], jnp.int32), max_new_tokens=8,
                                                stop_ids=[], repeat_guard=False)
        return weights, np.asarray(out_BxN), np.asarray(num_B)

    sharded, out_sharded, num_sharded = ids(False)
    assert any(_splits_fsdp(x.sharding.spec) for x in jax.tree.leaves(sharded))
    _, out_gathered, num_gathered = ids(True)
    np.testing.assert_array_equal(out_sharded, out_gathered)
    np.testing.assert_array_equal(num_sharded, [8, 8])
    np.testing.assert_array_equal(num_gathered, [8, 8])


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs the suite's 8 simulated devices")
def test_the_preflight_decode_program_follows_the_run_s_layout():
    from mypt_jax.preflight import programs as tp

    r, mesh = _tiny_fsdp8()

    def fsdp_args(program):
        main = next(line for line in program.lower().as_text().splitlines()
                    if "func.func public @main" in line)
        return main.count('"fsdp"')

    gathered = tp.decode_program(r, mesh, 0, None)  # no limit: the run gathers
    sharded = tp.decode_program(r, mesh, 0, 16 * MIB)  # the tiny model's copy does not fit
    assert gathered.shape["weights"] == "gathered" and gathered.name.endswith(" gathered")
    assert sharded.shape["weights"] == "sharded" and sharded.name.endswith(" sharded")
    assert fsdp_args(gathered) == 0 and fsdp_args(sharded) > 0
    # The train state's own weights stay beside a gathered copy; the sharded decode reads them.
    assert sharded.resident == 0
    assert gathered.resident == tp.bytes_per_device(ts.abstract_params(r.model_config, mesh))


def test_a_generation_out_of_device_memory_at_compile_ahead_names_the_fields():
    from configs import cpu_tiny

    c = cpu_tiny.get_config()
    c.eval_prompts_file = PROMPTS
    r = cfg_lib.resolve(c, "unused", num_devices=1, process_count=1, read_files=False)
    prompts = evaluator_lib.load_eval_prompts(PROMPTS)

    def job(error):
        def generate():
            raise error
        return compile_plan.generation_job(r, prompts, generate)

    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 3.1G.\nmore")
    with pytest.raises(MemoryError, match=r"eval_max_new_tokens: .*\(3 prompts.*3\.1G\.; fewer") as e:
        job(oom).warm()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="other"):  # anything else is not ours to explain
        job(ValueError("other")).warm()
