"""The newer upstream's training loop (dc62a0c: `GPT.fit`, `estimate_loss`,
`estimate_masked_token_accuracy`, the episode loader's epoch stream) in PyTorch over
torch_reference's model, with four switches back to our native loop's choices.

Per update `it`: the lr of `it`; at `it % eval_interval == 0` the val loss, the masked-token
accuracy (train stream, then val stream) and each eval set's loss; then `grad_accum`
microbatches, clipping and AdamW. After the loop a last val loss. Row contents come from our
loader (checked against the upstream's in test_weighted_packed.py); the order is this file's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mypt_jax.data import loader
from tests.torch_reference import TorchGPT, forward_segments, upstream_adamw

Rows = dict[str, torch.Tensor | None]  # x, y (int64 [n, T]), w (float32), seg (int64 or None)


class EpochStream:
    """One split read as the upstream's get_batch reads it in epoch mode: element i is
    G[perm_e[i % N]] with e = i // N and perm_e = RandomState(epoch_seed + e).permutation(N);
    every `take` continues where the last one stopped, across epochs."""

    def __init__(self, dataset_dir: str | Path, split: str, *, block_size: int, epoch_seed: int):
        self.source = loader.make_source(dataset_dir, split, batch_size=1, block_size=block_size,
                                         epoch_seed=epoch_seed, process_index=0, process_count=1)
        self.n, self.epoch_seed, self.position = len(self.source.split), epoch_seed, 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms[epoch] = np.random.RandomState(self.epoch_seed + epoch).permutation(self.n)
        return self._perms[epoch]

    def next_ids(self, count: int) -> np.ndarray:
        """Indices into G of the next `count` elements."""
        ids = [self._perm(i // self.n)[i % self.n]
               for i in range(self.position, self.position + count)]
        self.position += count
        return np.asarray(ids, np.int64)

    def take(self, count: int) -> Rows:
        rows = [self.source.rows_for(np.array([g])) for g in self.next_ids(count)]

        def stack(key: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.concatenate([r[key] for r in rows]).astype(dtype))

        return {"x": stack("inputs", np.int64), "y": stack("targets", np.int64),
                "w": stack("loss_mask", np.float32),
                "seg": stack("segment_ids", np.int64) if "segment_ids" in rows[0] else None}


def _sums(model: TorchGPT, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weight x CE, sum of weights) over the rows."""
    logits = forward_segments(model, rows["x"], rows["seg"])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows["y"].reshape(-1),
                         reduction="none")
    w = rows["w"].reshape(-1)
    return (ce * w).sum(), w.sum()


def _mean(model: TorchGPT, rows: Rows) -> torch.Tensor:
    s, c = _sums(model, rows)
    return s / c.clamp_min(1.0)


@torch.no_grad()
def _val_loss(model: TorchGPT, stream: EpochStream, eval_iters: int, rows: int) -> float:
    """estimate_loss: the mean over eval_iters batches of each batch's weighted mean."""
    return float(np.mean([float(_mean(model, stream.take(rows))) for _ in range(eval_iters)]))


@torch.no_grad()
def _token_accuracy(model: TorchGPT, stream: EpochStream, eval_iters: int,
                    rows: int) -> float | None:
    """estimate_masked_token_accuracy of one split: argmax == target where the weight is
    nonzero, counted over all eval_iters batches; None where no token counts."""
    correct = count = 0
    for _ in range(eval_iters):
        batch = stream.take(rows)
        pred = forward_segments(model, batch["x"], batch["seg"]).argmax(-1)
        trained = batch["w"] != 0
        correct += int(((pred == batch["y"]) & trained).sum())
        count += int(trained.sum())
    return correct / count if count else None


def _lr(it: int, *, lr: float, warmup: float, max_iters: int, cosine: bool) -> float:
    """Linear warmup lr*(it+1)/W, then a cosine from lr to lr/10 (or, not cosine, lr)."""
    W = int(warmup * max_iters) if isinstance(warmup, float) and 0 < warmup < 1 else int(warmup)
    if it < W:
        return lr * (it + 1) / W
    if not cosine:
        return lr
    low = 0.1 * lr
    progress = min((it - W) / max(1, max_iters - W), 1.0)
    return low + 0.5 * (lr - low) * (1.0 + math.cos(math.pi * progress))


def _update(model: TorchGPT, opt: torch.optim.Optimizer, micro: list[Rows], *,
            grad_clip: float, mean_of_micro_means: bool) -> float:
    """One optimizer step over the microbatches; returns the step's loss."""
    opt.zero_grad(set_to_none=True)
    if mean_of_micro_means:  # each microbatch's mean / k, backpropagated one at a time
        loss = 0.0
        for rows in micro:
            part = _mean(model, rows) / len(micro)
            part.backward()
            loss += float(part.detach())
    else:  # ours: every weighted CE of the step over the step's total weight
        sums = [_sums(model, rows) for rows in micro]
        total = sum(s for s, _ in sums) / sum(c for _, c in sums).clamp_min(1.0)
        total.backward()
        loss = float(total.detach())
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss


def dc62a0c_trace(model: TorchGPT, *, train_dir: str | Path, eval_sets: dict[str, str | Path],
                  max_iters: int, eval_interval: int, eval_iters: int, micro_batch: int,
                  grad_accum: int, lr: float, warmup: float, weight_decay: float,
                  grad_clip: float, epoch_seed: int, cosine: bool = True,
                  accuracy_pass: bool = True, eval_batch_micro: bool = True,
                  mean_of_micro_means: bool = True, final_sets: bool = False) -> dict:
    """Trains `model` in place as dc62a0c's fit() does and returns what it measured:
    {"train_loss": [per step], "val": {step: loss}, "sets": {name: {step: loss}},
    "acc": {step: (train_acc, val_acc)}, "final_val": loss}.

    Each switch turned off gives our native loop's choice instead: `cosine` (a constant lr
    after warmup), `accuracy_pass` (no accuracy, so the train stream serves updates alone),
    `eval_batch_micro` (eval batches of micro_batch * grad_accum rows), `mean_of_micro_means`
    (the step's loss is its total weighted CE over its total weight). `final_sets` adds each
    eval set's loss after the last update (at step max_iters), as our final eval logs it.
    """
    block = model.cfg.block_size
    train = EpochStream(train_dir, "train", block_size=block, epoch_seed=epoch_seed)
    val = EpochStream(train_dir, "val", block_size=block, epoch_seed=epoch_seed)
    sets = {name: EpochStream(path, "val", block_size=block, epoch_seed=epoch_seed)
            for name, path in eval_sets.items()}
    eval_rows = micro_batch if eval_batch_micro else micro_batch * grad_accum
    opt = upstream_adamw(model, lr, weight_decay)
    out: dict = {"train_loss": [], "val": {}, "sets": {name: {} for name in sets}, "acc": {}}
    model.train()  # dropout 0: the mode changes nothing
    for it in range(max_iters):
        for group in opt.param_groups:
            group["lr"] = _lr(it, lr=lr, warmup=warmup, max_iters=max_iters, cosine=cosine)
        if it % eval_interval == 0:
            out["val"][it] = _val_loss(model, val, eval_iters, eval_rows)
            if accuracy_pass:
                out["acc"][it] = (_token_accuracy(model, train, eval_iters, micro_batch),
                                  _token_accuracy(model, val, eval_iters, micro_batch))
            for name, stream in sets.items():
                out["sets"][name][it] = _val_loss(model, stream, eval_iters, eval_rows)
        micro = [train.take(micro_batch) for _ in range(grad_accum)]
        out["train_loss"].append(_update(model, opt, micro, grad_clip=grad_clip,
                                         mean_of_micro_means=mean_of_micro_means))
    out["final_val"] = _val_loss(model, val, eval_iters, eval_rows)
    if final_sets:
        for name, stream in sets.items():
            out["sets"][name][max_iters] = _val_loss(model, stream, eval_iters, eval_rows)
    return out
