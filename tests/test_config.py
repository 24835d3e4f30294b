"""Bad configs fail in config.resolve (before any compile) with a message naming the field."""

import json
import shutil

import pytest
import train_helpers

from configs import cpu_tiny, phase3a1_alpha, phase3a1_beta, phase3a1_gamma, phase3a2
from mypt_jax.data.tokenizer import Tokenizer
from mypt_jax.model import ModelConfig
from mypt_jax.training import trainer
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import train_step


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return train_helpers.make_dataset(tmp_path_factory.mktemp("cfg"))


def _resolve(c, **kw):
    return cfg_lib.resolve(c, num_devices=kw.pop("num_devices", 1), process_count=1, **kw)


def test_tiny_config_resolves(dataset, tmp_path):
    r = _resolve(train_helpers.tiny_config(dataset, tmp_path / "run"))
    assert r.mesh_shape == (1, 1, 1)
    assert r.config.log_file == str(tmp_path / "run" / "log.jsonl")
    # The native default saves on time and at the end; nothing at evals or step intervals.
    assert (r.config.checkpoint_minutes, r.config.checkpoint_interval,
            r.config.checkpoint_at_eval) == (15.0, 0, False)
    assert r.model_config.param_dtype == "float32"


def test_phase_configs_carry_the_upstream_table():
    table = {  # lr, max_iters, warmup, epoch_seed
        phase3a1_alpha: (7e-5, 3500, 150, 4501), phase3a1_beta: (5e-5, 2500, 100, 4502),
        phase3a1_gamma: (5e-5, 2500, 100, 4503), phase3a2: (3e-5, 4000, 150, 4504),
    }
    for module, (lr, iters, warmup, seed) in table.items():
        c = module.get_config()
        assert (c.learning_rate, c.max_iters, c.warmup_iters, c.epoch_seed) == (lr, iters, warmup, seed)
        assert (c.batch_size, c.block_size, c.dropout, c.weight_decay) == (16, 512, 0.05, 0.05)
        assert (c.eval_interval, c.eval_iters, c.grad_clip) == (100, 200, 1.0)
        assert (c.n_layer, c.n_embd, c.n_head, c.vocab_size, c.tie_weights) == (32, 1280, 20, 50304, True)
    assert phase3a1_gamma.get_config().init_from == phase3a1_beta.get_config().workdir


def test_unknown_field(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path)
    c.unlock()
    c.learnin_rate = 1.0
    with pytest.raises(cfg_lib.ConfigError, match="^learnin_rate"):
        _resolve(c)


@pytest.mark.parametrize("field,value,pattern", [
    ("lr_schedule", "linear", "^lr_schedule"),
    ("precision", "fp8", "^precision"),
    ("beta2", 1.0, "^beta2"),
    ("grad_accum_steps", 3, "^grad_accum_steps"),
    ("n_head", 5, "n_embd 32 is not divisible by n_head 5"),
    ("loss_chunk_size", 5, "^loss_chunk_size"),
])
def test_bad_values(dataset, tmp_path, field, value, pattern):
    c = train_helpers.tiny_config(dataset, tmp_path)
    c[field] = value
    with pytest.raises(cfg_lib.ConfigError, match=pattern):
        _resolve(c)


def test_mesh_that_does_not_divide_the_devices(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path, mesh_data=3)
    with pytest.raises(cfg_lib.ConfigError, match="^mesh_data/mesh_fsdp/mesh_tensor"):
        _resolve(c, num_devices=8)
    c = train_helpers.tiny_config(dataset, tmp_path, mesh_data=1, mesh_tensor=-1)
    with pytest.raises(cfg_lib.ConfigError, match="^mesh_tensor: parameter"):
        _resolve(c, num_devices=3)  # 3 does not split heads*head_dim = 32 columns
    c = train_helpers.tiny_config(dataset, tmp_path, batch_size=4, mesh_data=8)
    with pytest.raises(cfg_lib.ConfigError, match="^batch_size"):
        _resolve(c, num_devices=8)


def test_dataset_missing_a_split(dataset, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    shutil.rmtree(broken / "val")
    with pytest.raises(cfg_lib.ConfigError, match="^dataset_dir: .*val"):
        _resolve(train_helpers.tiny_config(broken, tmp_path / "run"))
    with pytest.raises(cfg_lib.ConfigError, match="^dataset_dir"):
        _resolve(train_helpers.tiny_config(tmp_path / "nope", tmp_path / "run"))


def _upstream_dir(path, arch: dict, tokenizer: Tokenizer):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(arch))
    (path / "tokenizer.json").write_text(json.dumps(tokenizer.get_state()))
    (path / "model.pt").write_bytes(b"")  # never read: the check comes first
    return path


def _arch(c, **changes):
    d = {k: c[k] for k in ("block_size", "vocab_size", "n_embd", "n_head", "n_layer", "dropout",
                           "bias", "tie_weights")}
    d.update(changes)
    return d


def test_init_of_another_architecture(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path / "run")
    c.init_from = str(_upstream_dir(tmp_path / "init", _arch(c, n_layer=3, n_embd=48, n_head=4),
                                    Tokenizer()))
    with pytest.raises(cfg_lib.ConfigError, match=r"^init_from: .*n_embd: 32 != 48.*n_layer: 2 != 3"):
        _resolve(c)


def test_init_with_another_token_map(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path / "run")
    ids = dict(Tokenizer().ids_by_name)
    ids["myPT_eot"], ids["myPT_toolresult_close"] = ids["myPT_toolresult_close"], ids["myPT_eot"]
    c.init_from = str(_upstream_dir(tmp_path / "init", _arch(c), Tokenizer(ids)))
    with pytest.raises(cfg_lib.ConfigError, match="^init_from: token map .*myPT_eot"):
        _resolve(c)


def test_init_block_size_and_inherit_switch(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path / "run")
    arch = _arch(c, block_size=64, epoch_seed=1337, episode_min_tokens=2)
    c.init_from = str(_upstream_dir(tmp_path / "init", arch, Tokenizer()))
    c.epoch_seed = 4501
    r = _resolve(c)  # our config wins; the longer position table is cut
    assert r.config.block_size == 32 and r.config.epoch_seed == 4501
    assert any("block_size" in n for n in r.notes)
    c.inherit_init_config = True
    r = _resolve(c)  # the upstream quirk
    assert r.config.block_size == 64 and r.config.epoch_seed == 1337


def test_train_fails_before_compiling(dataset, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(train_step, "make_train_step", boom)
    monkeypatch.setattr(train_step, "init_model", boom)
    c = train_helpers.tiny_config(dataset, tmp_path / "run", mesh_data=7)
    with pytest.raises(cfg_lib.ConfigError, match="^mesh_data"):
        trainer.train(c)


def test_model_config_from_precision(dataset, tmp_path):
    c = train_helpers.tiny_config(dataset, tmp_path, precision="bf16_pure")
    assert _resolve(c).model_config == ModelConfig(
        **{**_resolve(c).model_config.to_dict(), "param_dtype": "bfloat16", "dtype": "bfloat16"})
    c = train_helpers.tiny_config(dataset, tmp_path, precision="mixed")
    mc = _resolve(c).model_config
    assert (mc.param_dtype, mc.dtype) == ("float32", "bfloat16")


def test_cpu_tiny_is_small():
    c = cpu_tiny.get_config()
    assert c.n_layer <= 4 and c.n_embd <= 128 and not c.init_from


def test_cli_unknown_field_names_it():
    out = train_helpers.run_module(
        ["-m", "mypt_jax.train", "--config=configs/cpu_tiny.py", "--config.learnin_rate=1",
         "--workdir=/nonexistent"])
    assert out.returncode == 2
    assert "learnin_rate: unknown config field (did you mean learning_rate?)" in out.stderr


def test_eval_max_new_tokens_fits_the_block_unless_given(dataset, tmp_path):
    prompts = str(train_helpers.REPO / "configs/sft_eval/phase3a1_alpha_test_prompts.json")
    c = train_helpers.tiny_config(dataset, tmp_path, eval_prompts_file=prompts, block_size=48,
                                  eval_max_new_tokens=0)
    from mypt_jax import evaluate

    longest = max(len(Tokenizer().encode(p))
                  for p in evaluate.load_eval_prompts(prompts).prompts.values())
    r = _resolve(c)  # 0: the default 64, but block 48 leaves less after the longest prompt
    assert r.config.eval_max_new_tokens == 48 - longest
    assert [n for n in r.notes if n.startswith(f"eval_max_new_tokens not given: using {48 - longest}")]
    c.block_size = 128
    assert _resolve(c).config.eval_max_new_tokens == 64 and not _resolve(c).notes
    c.block_size, c.eval_max_new_tokens = 48, 48
    with pytest.raises(cfg_lib.ConfigError, match="^eval_max_new_tokens: 48 leaves no room"):
        _resolve(c)
