"""Host work off the critical path: the prefetched stream, the rebuilt val loss, NaN stops with
metrics fetched once per log window, async saves with two processes, and 2 -> 1 process resume."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time

import jax
import numpy as np
import pytest
import train_helpers
from test_preemption import run_processes

from mypt_jax.data import batching, prefetch
from mypt_jax.data import loader as data
from mypt_jax.parallel import sharding
from mypt_jax.training.evals import val_loss as val_lib
from mypt_jax.training.step import train_step as ts


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    """A split whose episodes have many lengths (1-12 words of answer)."""
    import json

    from mypt_jax.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("mixed")
    words = train_helpers.WORDS
    with (tmp / "chat.jsonl").open("w") as f:
        for i in range(90):
            answer = " ".join(words[(i + j) % len(words)] for j in range(1 + i % 12))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Say {words[i % 20]}."},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    prepare(tmp / "chat.jsonl", tmp / "ds", val_split=0.25, progress=False)
    return tmp / "ds"


def _source(ds, split="val", batch_size=4, block_size=32):
    return data.make_source(ds, split, batch_size=batch_size, block_size=block_size, epoch_seed=3,
                            process_index=0, process_count=1, row_stats=True)


def test_the_prefetched_stream_is_the_loop_stream_batch_for_batch(mixed_dataset):
    source = _source(mixed_dataset, "train")
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    layout = batching.Layout(block_size=32, length_buckets=(16, 24, 32), loss_positions=0,
                             pack=False)

    def produce(k):
        time.sleep(0.002 * (k % 3))  # an uneven loader: the queue fills and drains
        return prefetch.device_batch(source[k], mesh, layout, source.pad_id)

    for start in (0, 7):  # 7: a resume position
        ahead, inline = prefetch.Feed(produce, start, depth=2), prefetch.Feed(produce, start, 0)
        for k in range(start, start + 12):
            (a, info_a), (b, info_b) = ahead.next(), inline.next()
            assert info_a == info_b and ahead.position == inline.position == k + 1
            jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
        ahead.close()
        assert ahead.take_wait_s() >= 0 and inline.take_wait_s() > 0

    def broken(k):
        if k == 3:
            raise ValueError("episode 3 unreadable")
        return k

    feed = prefetch.Feed(broken, 0, depth=2)
    assert [feed.next() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="episode 3 unreadable"):
        feed.next()
    feed.close()


@pytest.mark.parametrize("eval_iters", [2, pytest.param(30, marks=pytest.mark.slow)])  # 30 x 4 rows > the split: resident, wrapping
def test_rebuilt_val_loss_equals_the_batchwise_one(mixed_dataset, eval_iters):
    source = _source(mixed_dataset, block_size=64)
    from mypt_jax.model import ModelConfig

    mc = ModelConfig(block_size=64, vocab_size=50304, n_embd=32, n_head=4, n_layer=2,
                     dropout=0.1)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    mdef, params = ts.init_model(mc, mesh, seed=5)
    # Packed training batches: the per-episode pass must still see one episode per row.
    layout = batching.Layout(block_size=64, length_buckets=(32, 40, 48, 64), loss_positions=0,
                             pack=True)
    assert eval_iters * 4 < len(source.split) or eval_iters * 4 > 2 * len(source.split)
    rebuilt = val_lib.ValLoss(source, val_lib.make_row_loss_step(mdef, mesh), mesh, layout,
                                 eval_iters)
    assert rebuilt.resident == (eval_iters == 30)
    eval_fn = ts.make_eval_step(mdef, mesh)
    plain = dataclasses.replace(layout, pack=False, length_buckets=(64,), loss_positions=-1)
    lengths = set(np.minimum(source.split.length_G, 65).tolist())
    assert len(lengths) > 5, lengths
    for position in (0, eval_iters, 3 * eval_iters):  # consecutive evals, then a later one
        got = rebuilt(params, position)
        for ref_layout in (layout, plain):
            want = val_lib.batchwise_val_loss(eval_fn, params, source, position, eval_iters,
                                                 mesh, ref_layout)
            np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.slow
def test_nan_stops_at_its_step_with_metrics_fetched_once_per_window(tmp_path, monkeypatch):
    """NaN in update 6: the fetch forced before the step-8 save finds it; checkpoint 4 is named
    and no checkpoint is written after it."""
    from mypt_jax.training import trainer
    from mypt_jax.training.compilation import program_set as programs

    call, calls = programs.Programs.call, [0]

    def nan_at_6(self, kind, *args):
        out = call(self, kind, *args)
        if kind != "train":
            return out
        state, metrics = out
        if calls[0] == 6:
            metrics = {**metrics, "train_loss": metrics["train_loss"] * np.nan}
        calls[0] += 1
        return state, metrics

    monkeypatch.setattr(programs.Programs, "call", nan_at_6)
    dataset = train_helpers.make_dataset(tmp_path)
    c = train_helpers.tiny_config(dataset, tmp_path / "run", max_iters=20, eval_interval=4,
                                  checkpoint_at_eval=True, log_interval=5, eval_prompts_file="",
                                  warmup_iters=0)
    with pytest.raises(FloatingPointError) as err:
        trainer.train(c)
    assert re.fullmatch(r"train loss is nan at step 6; last good checkpoint: step 4 at \S+/4",
                        str(err.value)), str(err.value)
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == [0, 4]
    log = train_helpers.read_log(tmp_path / "run" / "log.jsonl")
    assert [r["iter"] for r in log if "train_loss" in r] == [4]  # the one full window before
    assert log[-1]["iter"] == 6 and "last_good_checkpoint" in log[-1]


# ----------------------------------------------------------------------------- processes

OVERRIDES = {
    "max_iters": 8, "eval_interval": 4, "checkpoint_at_eval": True, "log_interval": 1,
    "eval_iters": 2, "dropout": 0.1, "n_embd": 32, "block_size": 32, "batch_size": 8,
    "tensorboard": False, "eval_prompts_file": "", "warmup_iters": 0, "length_buckets": (28, 32),
}

def _cli(dataset, workdir, **extra):
    return train_helpers.train_cli("configs/cpu_tiny.py", workdir,
                                   {**OVERRIDES, "dataset_dir": dataset, **extra})


def _losses(workdir) -> dict[int, float]:
    return {r["iter"]: r["train_loss"] for r in train_helpers.read_log(workdir / "log.jsonl")
            if "train_loss" in r}


@pytest.mark.slow
def test_two_processes_save_async_and_resume_bit_identically_after_sigkill(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    two = {"mesh_data": 2, "mesh_fsdp": 2, "async_checkpointing": "on"}
    results = run_processes(lambda i: _cli(dataset, ref, **two), 2, 2)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]
    saves = [r for r in train_helpers.read_log(ref / "log.jsonl") if r.get("event") == "save"]
    assert [s["iter"] for s in saves] == [0, 4, 8]
    assert all(s["total_s"] >= s["blocking_s"] >= 0 for s in saves)

    # Both processes die at once as update 5 starts (after the async save of step 4).
    results = run_processes(
        lambda i: train_helpers.signalled(_cli(dataset, run, **two), 5, "SIGKILL"), 2, 2)
    assert [rc for rc, _ in results] == [-signal.SIGKILL] * 2, results[0][1][-3000:]
    results = run_processes(lambda i: _cli(dataset, run, **two), 2, 2)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]
    jax.tree.map(np.testing.assert_array_equal, train_helpers.final_params(ref),
                 train_helpers.final_params(run))
    assert _losses(run) == _losses(ref)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process(tmp_path):
    dataset = train_helpers.make_dataset(tmp_path)
    ref, run = tmp_path / "ref", tmp_path / "run"
    twin = {"mesh_data": 4, "eval_sets": f"twin={dataset}"}  # an eval set: the same numbers too
    out = train_helpers.run_module(_cli(dataset, ref, **twin), devices=4)
    assert out.returncode == 0, out.stderr[-3000:]
    results = run_processes(lambda i: _cli(dataset, run, **twin, max_iters=4), 2, 2)
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:]
    out = train_helpers.run_module(_cli(dataset, run, **twin), devices=4)
    assert out.returncode == 0, out.stderr[-3000:]
    log = train_helpers.read_log(run / "log.jsonl")
    assert [(s["iter"], s["processes"]) for s in log if s.get("event") == "start"] == [
        (0, 2), (4, 1)]
    # The same global batches, reduced in another order: equal to float32 rounding.
    ref_losses, losses = _losses(ref), _losses(run)
    assert sorted(losses) == sorted(ref_losses) == list(range(8))
    np.testing.assert_allclose([losses[k] for k in range(8)],
                               [ref_losses[k] for k in range(8)], rtol=1e-5)
    assert os.path.isdir(run / "checkpoints" / "8")
    evals = {w: {r["iter"]: (r["val_loss"], r["val_loss/twin"])
                 for r in train_helpers.read_log(w / "log.jsonl") if "val_loss" in r}
             for w in (ref, run)}
    assert sorted(evals[run]) == sorted(evals[ref]) == [0, 4, 8]
    for step, (val, twin) in evals[run].items():  # 0 by two processes, 4 and 8 by one
        np.testing.assert_allclose([val, twin], evals[ref][step], rtol=1e-5)
        assert twin == val


# The generation loop of a 2-layer model on an fsdp=8 CPU mesh, compiled with the training
# layout and with `decode_layout.decode_layout`; prints the collectives inside while bodies.
_DECODE_HLO = """
import json, re
import jax, jax.numpy as jnp
from flax import nnx
from mypt_jax.decoding import decode
from mypt_jax.model import ModelConfig
from mypt_jax.parallel import sharding
from mypt_jax.training.evals import decode_layout
from mypt_jax.training.step import train_step as ts

mc = ModelConfig(block_size=64, vocab_size=50304, n_embd=64, n_head=4, n_layer=2, dropout=0.0)
mesh = sharding.make_mesh((1, 8, 1))
mdef, params = ts.init_model(mc, mesh, seed=0)

def loop_collectives(params):
    graphdef, state = nnx.split(mdef.merge(params))
    hlo = decode._generate_jit.lower(
        graphdef, state, jnp.zeros((2, 16), jnp.int32), jnp.array([16, 16], jnp.int32),
        jnp.int32(8), decode.GREEDY.arrays(), jnp.zeros((4,), jnp.int32), jax.random.key(0),
        jnp.bool_(True), max_new_cap=8, penalty_window=decode.PENALTY_WINDOW,
    ).compile().as_text()
    comps, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\\w.\\-]+) .*\\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif name:
            comps[name].append(line)
    todo = [m for ls in comps.values() for l in ls for m in re.findall(r"\\bwhile\\(.*body=%?([\\w.\\-]+)", l)]
    seen = set()
    while todo:
        n = todo.pop()
        if n in seen or n not in comps:
            continue
        seen.add(n)
        todo += re.findall(r"(?:to_apply|calls|body|condition)=%?([\\w.\\-]+)", "\\n".join(comps[n]))
    ops = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
    return sum(l.count(op + "(") + l.count(op + "-start(") for n in seen for l in comps[n] for op in ops)

print("COUNTS " + json.dumps([loop_collectives(params),
                               loop_collectives(decode_layout.decode_layout(params, mesh))]))
"""


@pytest.mark.slow
def test_eval_prompt_decode_gathers_the_weights_once_not_per_token():
    out = train_helpers.run_module(["-c", _DECODE_HLO], devices=8, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("COUNTS ")]
    import json

    fsdp_layout, decode_layout = json.loads(line.removeprefix("COUNTS "))
    assert fsdp_layout > 0  # the training layout gathers inside the token loop ...
    assert decode_layout == 0  # ... the decode layout never does
