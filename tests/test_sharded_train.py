"""The same steps on 1 device and on 8 simulated devices (data 2, fsdp 2, tensor 2)."""

import jax
import numpy as np
import pytest
import train_helpers

from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training.checkpoint import manager as checkpoint
from mypt_jax.training.checkpoint import run_meta
from mypt_jax.training.setup import config
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts

OVERRIDES = {
    "max_iters": 4, "warmup_iters": 2, "eval_interval": 100, "log_interval": 1, "eval_iters": 1, "dropout": 0.1,
    "n_embd": 32, "block_size": 32, "batch_size": 8, "tensorboard": False,
    "eval_prompts_file": "", "grad_accum_steps": 2,
}


def _run(dataset, workdir, devices, mesh):
    data_, fsdp, tensor = mesh
    args = train_helpers.train_cli("configs/cpu_tiny.py", workdir, {
        **OVERRIDES, "dataset_dir": dataset, "mesh_data": data_, "mesh_fsdp": fsdp,
        "mesh_tensor": tensor})
    out = train_helpers.run_module(args, devices=devices)
    assert out.returncode == 0, out.stderr[-3000:]
    log = train_helpers.read_log(workdir / "log.jsonl")
    assert [r["mesh"] for r in log if r.get("event") == "start"] == [
        dict(zip(sharding.MESH_AXES, mesh, strict=True))]
    return [r["train_loss"] for r in log if "train_loss" in r], log


@pytest.mark.slow
def test_one_device_equals_eight(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    one, log1 = _run(dataset, tmp_path / "one", 1, (1, 1, 1))
    eight, log8 = _run(dataset, tmp_path / "eight", 8, (2, 2, 2))
    assert len(one) == len(eight) == 4
    np.testing.assert_allclose(one, eight, rtol=2e-5)
    v1 = [r["val_loss"] for r in log1 if "val_loss" in r]
    v8 = [r["val_loss"] for r in log8 if "val_loss" in r]
    np.testing.assert_allclose(v1, v8, rtol=2e-5)

    # The 8-device checkpoint restores onto this process's single-device mesh, state and all.
    meta = run_meta.latest_run_meta(tmp_path / "eight")
    mc = ModelConfig.from_dict(meta["model_config"])
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, _ = optim.optimizer_from_config(config.resolve(
        train_helpers.tiny_config(dataset, tmp_path / "x", **OVERRIDES), num_devices=1,
        process_count=1).config)
    ck = checkpoint.Checkpointer(tmp_path / "eight", read_only=True)
    state, train_state, _, meta = ck.restore(ck.latest_step(), ts.abstract_state(tx, mc, mesh))
    ck.close()
    assert int(state.step) == 4 and train_state == {"next_index": 4}
    assert {s.sharding.mesh.size for s in jax.tree.leaves(state)} == {1}
    p1 = train_helpers.final_params(tmp_path / "one")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6),
                 p1, state.params)


def test_the_eight_device_mesh_and_what_it_asks_of_the_batch(tmp_path):
    """In-process, the fast tier's part: the slow test's mesh resolves, and a batch that cannot
    be split over it, or a mesh bigger than the devices, is refused naming the fields."""
    dataset = train_helpers.make_dataset(tmp_path, n=20)
    c = train_helpers.tiny_config(dataset, tmp_path / "w", **{**OVERRIDES, "warmup_iters": 1},
                                  mesh_data=2, mesh_fsdp=2, mesh_tensor=2)
    assert config.resolve(c, num_devices=8, process_count=1).mesh_shape == (2, 2, 2)
    c.batch_size = 12  # microbatches of 6 rows over data x fsdp = 4 shards
    with pytest.raises(config.ConfigError, match=r"^batch_size: the microbatch of 6 rows .* not "
                                                 r"divisible by mesh_data \* mesh_fsdp = 4"):
        config.resolve(c, num_devices=8, process_count=1)
    c.batch_size, c.mesh_tensor = 8, 3
    with pytest.raises(config.ConfigError, match=r"use 12 devices, but 8 are available"):
        config.resolve(c, num_devices=8, process_count=1)
