"""Padding-free training keeps the training trace: against our own padded layout (40 steps on
alpha) and against the test suite's PyTorch model with torch's AdamW on the upstream's padded
batches (20 steps). Both run with the defaults on (trimmed rows, trained-position head)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import train_helpers

from configs import cpu_tiny
from datagen import format_lock
from datagen.records import write_jsonl
from mypt_jax.data import loader as data
from mypt_jax.data.prepare import prepare
from mypt_jax.training import trainer
from tests.torch_reference import Cfg, TorchGPT, upstream_adamw, write_upstream_dir

BLOCK = 128  # alpha episodes are at most 34 tokens: the default buckets cut rows to 64
ARCH = dict(block_size=BLOCK, vocab_size=50304, n_embd=64, n_head=4, n_layer=2, dropout=0.0)


@pytest.fixture(scope="module")
def alpha(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alpha")
    write_jsonl(tmp / "alpha.jsonl", format_lock.generate(mode="minimal", math="exclude"))
    prepare(tmp / "alpha.jsonl", tmp / "ds", val_split=0.1, progress=False)
    return tmp / "ds"


def _config(dataset, workdir, steps: int, **overrides):
    c = cpu_tiny.get_config()
    for k, v in ARCH.items():
        c[k] = v
    c.update(dict(dataset_dir=str(dataset), workdir=str(workdir), max_iters=steps,
                  batch_size=8, precision="fp32", learning_rate=1e-3, warmup_iters=0,
                  lr_schedule="constant", weight_decay=0.1, grad_clip=1.0,
                  eval_interval=1000, eval_iters=1, eval_prompts_file="", log_interval=1,
                  tensorboard=False, epoch_seed=4501, **overrides))
    return c


def _train_losses(workdir) -> tuple[list[float], list[str]]:
    log = train_helpers.read_log(workdir / "log.jsonl")
    steps = sorted((r["iter"], r["train_loss"], r["buckets"][-1]) for r in log
                   if "train_loss" in r)
    assert [s[0] for s in steps] == list(range(len(steps)))
    return [s[1] for s in steps], [s[2] for s in steps]


def _train_with_xla_optimizations(c) -> None:
    """`c` trained by `python -m mypt_jax.train` with XLA:CPU's optimizations, which the suite's
    own process compiles without: 40 steps through the 50304-row head are compute, not compile
    (train_helpers.FAST_COMPILE_FLAGS)."""
    base = cpu_tiny.get_config()
    overrides = {k: v for k, v in c.items() if k != "workdir" and base.get(k) != v}
    out = train_helpers.run_module(train_helpers.train_cli("configs/cpu_tiny.py", c.workdir,
                                                           overrides), fast_compile=False)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_trimmed_head_trace_equals_the_padded_trace(alpha, tmp_path):
    _train_with_xla_optimizations(_config(alpha, tmp_path / "padded", 40,
                                          length_buckets=(BLOCK,), loss_positions=-1))
    _train_with_xla_optimizations(_config(alpha, tmp_path / "fast", 40))
    padded, padded_buckets = _train_losses(tmp_path / "padded")
    fast, fast_buckets = _train_losses(tmp_path / "fast")
    assert set(padded_buckets) == {f"8x{BLOCK}/kall"}
    assert {b.split("/")[0] for b in fast_buckets} == {"8x64"} and "kall" not in str(fast_buckets)
    np.testing.assert_allclose(fast, padded, atol=1e-5, rtol=0)
    a = train_helpers.final_params(tmp_path / "padded")
    b = train_helpers.final_params(tmp_path / "fast")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=0), a, b)


def _torch_trace(model: TorchGPT, dataset, c, steps: int) -> list[float]:
    """The upstream's loop: padded loader batches, masked mean CE, clip_grad_norm_, AdamW over
    the parameters that require a gradient, in the upstream's decay groups."""
    opt = upstream_adamw(model, c.learning_rate, c.weight_decay, (c.beta1, c.beta2), c.adam_eps)
    it = data.make_iterator(dataset, "train", batch_size=c.batch_size, block_size=c.block_size,
                            epoch_seed=c.epoch_seed, process_index=0, process_count=1)
    losses = []
    model.train()
    for _ in range(steps):
        b = next(it)
        logits = model(torch.from_numpy(b["inputs"].astype(np.int64)))
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.from_numpy(b["targets"].astype(np.int64))
            .reshape(-1), reduction="none")
        mask = torch.from_numpy(b["loss_mask"]).reshape(-1)
        loss = (ce * mask).sum() / mask.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    it.close()
    return losses


@pytest.mark.slow
def test_twenty_steps_match_pytorch_adamw_on_padded_batches(alpha, tmp_path):
    torch.manual_seed(0)
    ref = TorchGPT(Cfg(**ARCH, tie_weights=True, bias=False)).randomize_(3)
    tok_state = json.loads((alpha / "tokenizer_state.json").read_text())
    init = write_upstream_dir(ref, tmp_path / "init", generation="seed", tokenizer_state=tok_state)
    c = _config(alpha, tmp_path / "ours", 20, init_from=str(init))
    trainer.train(c)
    ours, buckets = _train_losses(tmp_path / "ours")
    assert "kall" not in str(buckets) and {b.split("/")[0] for b in buckets} == {"8x64"}
    theirs = _torch_trace(ref, alpha, c, 20)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_the_first_steps_of_both_layouts_agree(alpha, tmp_path):
    """The fast tier's piece of the trace: 3 steps, padded rows against trimmed rows with the
    trained-position head, on the trace's batches."""
    trainer.train(_config(alpha, tmp_path / "padded", 3, length_buckets=(BLOCK,),
                          loss_positions=-1, n_embd=32, n_head=2))
    trainer.train(_config(alpha, tmp_path / "fast", 3, n_embd=32, n_head=2))
    padded, padded_buckets = _train_losses(tmp_path / "padded")
    fast, fast_buckets = _train_losses(tmp_path / "fast")
    assert set(padded_buckets) == {f"8x{BLOCK}/kall"}
    assert {b.split("/")[0] for b in fast_buckets} == {"8x64"} and "kall" not in str(fast_buckets)
    np.testing.assert_allclose(fast, padded, atol=1e-5, rtol=0)
