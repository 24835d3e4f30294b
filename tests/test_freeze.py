"""Frozen parameters (training/step/freeze.py), the upstream's freeze_layers / freeze_embeddings.

Shapes of the optimizer state and the optax protocol on small trees, the config checks, then
20 training steps of a tiny model against the test suite's PyTorch model with the same
parameters frozen (requires_grad=False, AdamW over the rest in the upstream's groups).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
import train_helpers

from configs import cpu_tiny
from mypt_jax.interop import upstream
from mypt_jax.model import ModelConfig, param_shapes
from mypt_jax.training import trainer
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import optim
from mypt_jax.training.step.freeze import Freeze, resume_problem

# The trace test's model, data and upstream loop (its AdamW skips requires_grad=False params).
from tests.test_trace import ARCH, _torch_trace, alpha  # noqa: F401
from tests.torch_reference import Cfg, TorchGPT, freeze_, write_upstream_dir


def _abstract(cfg: ModelConfig):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def _flat(tree) -> dict[str, object]:
    """name -> leaf, an optax.MaskedNode standing for a parameter with no moments."""
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): x for path, x in leaves}


def _moments(opt_state, which: str = "mu") -> dict[str, object]:
    return _flat(optax.tree_utils.tree_get(opt_state, which))


def _tx(freeze: Freeze):
    return optim.make_optimizer(learning_rate=1e-2, max_iters=10, warmup_iters=0,
                                weight_decay=0.1, grad_clip=1.0, freeze=freeze)[0]


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("freeze", "tie"), [
    (Freeze(layers=3), True), (Freeze(embeddings=True), False), (Freeze(4, True), True)])
def test_moments_exist_for_the_trainable_rows_only(freeze, tie):
    cfg = ModelConfig(block_size=8, vocab_size=64, n_embd=16, n_head=2, n_layer=4,
                      tie_weights=tie)
    params = _abstract(cfg)
    state = jax.eval_shape(_tx(freeze).init, params)
    unfrozen = _flat(params)
    for which in ("mu", "nu"):
        m = _moments(state, which)
        assert set(m) == set(unfrozen)  # one entry per parameter, frozen ones masked
        for name, p in unfrozen.items():
            if name.startswith("blocks.") and freeze.layers == cfg.n_layer or (
                    name in ("wte", "wpe") and freeze.embeddings):
                assert isinstance(m[name], optax.MaskedNode), name
            elif name.startswith("blocks."):
                assert m[name].shape == (cfg.n_layer - freeze.layers, *p.shape[1:]), name
            else:  # ln_f, lm_head_bias and an untied head train, as upstream
                assert m[name].shape == p.shape, name
        # the moments hold exactly the trainable parameters, nothing more
        held = sum(math.prod(x.shape) for x in jax.tree.leaves(m))
        assert held == freeze.count(param_shapes(cfg))[0]


def test_count_and_view_of_the_750m():
    cfg = ModelConfig(block_size=512, vocab_size=50304, n_embd=1280, n_head=20, n_layer=32,
                      tie_weights=True)
    trainable, total = Freeze(layers=28).count(param_shapes(cfg))
    per_block = sum(math.prod(s[1:]) for s in param_shapes(cfg)["blocks"].values())
    assert total - trainable == 28 * per_block
    view = jax.eval_shape(Freeze(layers=28).view, _abstract(cfg))
    assert view["blocks"]["qkv_kernel"].shape == (4, 1280, 3840)
    assert view["wte"].shape == (50304, 1280)


def test_updates_leave_frozen_rows_unwritten():
    """The optax protocol (full-shaped updates, zero on frozen rows) and the step's in-place
    application agree; frozen rows and frozen leaves are the very same bits afterwards."""
    rng = np.random.default_rng(0)
    params = {"blocks": {"qkv_kernel": rng.normal(size=(2, 4, 6)).astype(np.float32),
                         "ln1_scale": rng.normal(size=(2, 4)).astype(np.float32)},
              "wte": rng.normal(size=(5, 4)).astype(np.float32),
              "lm_head_bias": rng.normal(size=(5,)).astype(np.float32)}
    params["blocks"]["ln1_scale"][0, 0] = -0.0  # p + 0.0 would turn it into +0.0
    freeze = Freeze(layers=1, embeddings=True)
    tx = _tx(freeze)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for _ in range(3):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
        full, _ = tx.update(g, state, p)
        view, state = tx.inner.update(freeze.view(g), state, freeze.view(p))
        np.testing.assert_array_equal(full["blocks"]["qkv_kernel"][:1], 0.0)
        np.testing.assert_array_equal(full["wte"], 0.0)
        new = freeze.apply_updates(p, view)
        via_optax = optax.apply_updates(p, full)
        np.testing.assert_array_equal(new["blocks"]["qkv_kernel"][1:],
                                      via_optax["blocks"]["qkv_kernel"][1:])
        np.testing.assert_array_equal(new["lm_head_bias"], via_optax["lm_head_bias"])
        p = new
    bits = jax.tree.map(lambda a: np.asarray(a).view(np.uint32), (p, params))
    assert (bits[0]["blocks"]["ln1_scale"][0] == bits[1]["blocks"]["ln1_scale"][0]).all()
    assert (bits[0]["blocks"]["qkv_kernel"][0] == bits[1]["blocks"]["qkv_kernel"][0]).all()
    assert (bits[0]["wte"] == bits[1]["wte"]).all()
    assert not np.array_equal(p["blocks"]["qkv_kernel"][1], params["blocks"]["qkv_kernel"][1])


# ----------------------------------------------------------------------------- config


def _resolve(tmp_path, **fields):
    c = cpu_tiny.get_config()
    c.update(dict(workdir=str(tmp_path / "w"), dataset_dir=str(tmp_path / "none"), **fields))
    return cfg_lib.resolve(c, num_devices=1, process_count=1, read_files=False)


def test_config_checks_and_notes(tmp_path):
    with pytest.raises(cfg_lib.ConfigError, match=r"^freeze_layers: expected 0 to n_layer \(2\) "
                                                  r"blocks, got 3$"):
        _resolve(tmp_path, freeze_layers=3)
    assert _resolve(tmp_path).notes == ()
    notes = _resolve(tmp_path, freeze_layers=1, freeze_embeddings=True).notes
    assert notes[0].startswith("frozen: blocks 0-0 of 2, embeddings frozen; ")
    assert notes[1] == ("freeze_embeddings with tie_weights: the output head is the token "
                        "embedding, so its weight is frozen too (lm_head_bias and ln_f still train)")
    assert len(_resolve(tmp_path, freeze_embeddings=True, tie_weights=False).notes) == 1


def test_preflight_reports_the_optimizer_state_freezing_spares(tmp_path):
    from mypt_jax.parallel import sharding
    from mypt_jax.preflight import programs

    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    r = _resolve(tmp_path, freeze_layers=1, freeze_embeddings=True)
    saved = programs.freeze_savings(r, mesh)
    trainable, total = Freeze(1, True).count(param_shapes(r.model_config))
    assert (saved["trainable_params"], saved["total_params"]) == (trainable, total)
    # two float32 moments per frozen parameter, nothing else
    assert saved["opt_state_bytes_unfrozen"] - saved["opt_state_bytes"] == 2 * 4 * (total - trainable)
    assert programs.freeze_savings(_resolve(tmp_path), mesh) is None


def test_a_checkpoint_resumes_only_with_the_freezing_it_was_trained_with():
    assert resume_problem(Freeze(), {"learning_rate": 1e-3}, "w") is None  # before freezing
    assert resume_problem(Freeze(2, True), {"freeze_layers": 2, "freeze_embeddings": True},
                          "w") is None
    message = resume_problem(Freeze(layers=1), {"freeze_layers": 0}, "runs/x")
    assert message.startswith("freeze_layers: runs/x was trained with freeze_layers=0, "
                              "freeze_embeddings=False (now 1, False)")
    assert message.endswith("--config.init_from=runs/x (the weights carry over, the optimizer "
                            "starts fresh)")
    assert resume_problem(Freeze(embeddings=True), {}, "w") is None
    assert resume_problem(Freeze(embeddings=True), {"freeze_layers": 0}, "w").startswith(
        "freeze_embeddings: ")


# ----------------------------------------------------------------------------- against torch

def _config(dataset, workdir, steps: int, **overrides):
    c = cpu_tiny.get_config()
    c.update(dict(ARCH, dataset_dir=str(dataset), workdir=str(workdir), max_iters=steps,
                  batch_size=8, precision="fp32", learning_rate=1e-3, warmup_iters=0,
                  lr_schedule="constant", weight_decay=0.1, grad_clip=1.0,
                  eval_interval=1000, eval_iters=1, eval_prompts_file="", log_interval=1,
                  tensorboard=False, epoch_seed=4501, **overrides))
    return c


def _losses(workdir) -> list[float]:
    log = [r for r in train_helpers.read_log(workdir / "log.jsonl") if "train_loss" in r]
    assert sorted(r["iter"] for r in log) == list(range(len(log)))
    return [r["train_loss"] for r in sorted(log, key=lambda r: r["iter"])]


def _saved_moments(workdir) -> dict[str, tuple[int, ...]]:
    """The shapes of the Adam first moments in the run's newest checkpoint, as written."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    with ocp.PyTreeCheckpointer() as ck:
        tree = ck.metadata(workdir / "checkpoints" / str(step) / "state").item_metadata.tree
    mu = _flat(optax.tree_utils.tree_get(tree["opt_state"], "mu"))
    return {k: tuple(v.shape) for k, v in mu.items() if hasattr(v, "shape")}


@pytest.mark.slow
@pytest.mark.parametrize(("layers", "embeddings"), [(1, False), (0, True)])
def test_twenty_frozen_steps_match_pytorch(alpha, tmp_path, layers, embeddings):  # noqa: F811
    torch.manual_seed(0)
    ref = TorchGPT(Cfg(**ARCH, tie_weights=True, bias=False)).randomize_(3)
    tok_state = json.loads((alpha / "tokenizer_state.json").read_text())
    init = write_upstream_dir(ref, tmp_path / "init", generation="seed", tokenizer_state=tok_state)
    start = upstream.read_upstream(init).params
    workdir = tmp_path / "ours"
    c = _config(alpha, workdir, 20, init_from=str(init), freeze_layers=layers,
                freeze_embeddings=embeddings)
    # Stop after 10 steps and rerun: a frozen run's checkpoint (moments cut or masked) resumes.
    trainer.train(_config(alpha, workdir, 10, init_from=str(init), freeze_layers=layers,
                          freeze_embeddings=embeddings))
    assert trainer.train(c)["resumed_from"] == 10
    theirs = _torch_trace(freeze_(ref, layers, embeddings), alpha, c, 20)
    np.testing.assert_allclose(_losses(workdir), theirs, atol=1e-5, rtol=0)

    final = train_helpers.final_params(workdir)
    for name in param_shapes(cfg_lib.model_config(c))["blocks"]:
        before, after = start["blocks"][name], final["blocks"][name]
        assert after[:layers].tobytes() == before[:layers].tobytes(), name  # bit for bit
        assert not np.array_equal(after[layers:], before[layers:]), name
    for name in ("wte", "wpe"):
        assert (final[name].tobytes() == start[name].tobytes()) == embeddings, name
    assert not np.array_equal(final["lm_head_bias"], start["lm_head_bias"])

    saved = _saved_moments(workdir)
    assert saved["blocks.qkv_kernel"] == (2 - layers, 64, 192)
    assert ("wte" in saved, "wpe" in saved) == (not embeddings, not embeddings)
    # Parameters only: another run (or `generate`) reads the weights of a frozen run's checkpoint.
    params, _ = checkpoint.restore_params(workdir, jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), final))
    assert params["wte"].shape == final["wte"].shape
    # Resuming with other freezing is refused when the checkpoint's record is read, before its
    # state: the mismatched optimizer tree must not pass for a damaged checkpoint and be moved.
    with pytest.raises(cfg_lib.ConfigError, match=r"^freeze_(layers|embeddings): .* was trained "
                                                  r"with freeze_layers"):
        trainer.train(_config(alpha, workdir, 30, init_from=str(init)))
    assert not list((workdir / "checkpoints").glob("*.damaged*"))
