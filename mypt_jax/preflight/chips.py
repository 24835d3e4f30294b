"""Accelerator facts and the cost model: the chip table, model FLOPs, and the roofline.

The one home of these numbers: `mypt_jax.preflight`, the benchmarks and launch/README.md
read them from here.

Chip table: one row per accelerator, figures per JAX device from the vendors' data sheets
(cited per row). A v4 or v5p chip holds two TensorCores that JAX drives as one "megacore"
device, so its row is the whole chip; v5e and v6e chips have one TensorCore. Peaks are
dense bf16 (no 2:4 sparsity).

FLOP count of one training step (forward + backward), defined here once:

    flops = 6 * N_body * B * T            # every block matmul, forward (2) + backward (4)
          + 6 * V * C * B * P             # the vocabulary projection, on the P projected
                                          #   positions per row (P = T unless the loss only
                                          #   projects trained positions)
          + 12 * L * T * C * B * T        # attention scores and weighted sum (PaLM / nanoGPT)

i.e. 6 * N * tokens + 12 * L * T * C per token with N = N_body + V * C. N_body = the matmul
weights of the blocks (qkv, attention proj, MLP kernels): what every token multiplies;
embeddings are lookups and norms/biases are negligible. The attention term counts the whole
T x T square as the PaLM / nanoGPT MFU figures do; half of it is masked (causal), reported as
`attention_causal`. A forward pass alone (eval) is a third of each term; decoding is
2 * N_matmul per token plus 4 * L * C * S for S cached positions.

Roofline of one compiled program, per device:

    compute_s    = executed FLOPs / bf16 peak
    overlap_s    = HBM bytes of matmul instructions and async copies / HBM bandwidth
    memory_s     = HBM bytes of all instructions / HBM bandwidth
    collective_s = bytes of the synchronous collectives (all-gather, reduce-scatter,
                   all-reduce, ...) / interconnect bandwidth (TPU ICI, NVLink)
    async_s      = bytes of the collectives the compiled schedule runs asynchronously
                   (a -start ... -done pair) / interconnect bandwidth
    step_s       = max(compute_s, overlap_s, async_s) + (memory_s - overlap_s) + collective_s
    MFU       = model FLOPs / (step_s * bf16 peak)

Executed FLOPs are the model FLOPs plus the forward pass that remat "full" recomputes
(a third of the training FLOPs again); "dots" saves the weight matmuls' outputs and
recomputes the elementwise work and attention's forward (its matmuls have batch dims, so
the policy does not save them). XLA runs a step's instructions one after another: a matmul
(with the elementwise work fused into it) streams its operands while the MXU computes, and
the compiler's asynchronous copies between HBM and on-chip memory prefetch the next
operands meanwhile, so their bytes overlap the FLOPs; the other instructions
(normalisation, softmax, dropout, the optimizer update, copies) run at HBM bandwidth, so
their time adds. A collective is counted as XLA scheduled it: one it started
asynchronously moves over the links while the instructions up to its -done compute, and
is assumed hidden under the compute (the step is at least as long as it); a synchronous
one stalls the instructions after it and adds its time. `step_s_bound` =
max(compute_s, memory_s) is the optimistic bound. Bytes come from the compiled program
(`hlo_cost.py`: HBM only, every loop iteration counted); FLOPs never do: XLA counts a
scanned layer body once.
"""

from __future__ import annotations

import dataclasses

from mypt_jax.model.flops import (  # noqa: F401 - the FLOP formulas, defined in the model wing
    body_matmul_params,
    decode_flops_per_token,
    forward_flops,
    model_shape,
    remat_flops,
    train_step_flops,
)


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # our key
    platform: str  # "tpu" | "cuda"
    device_kinds: tuple[str, ...]  # lower-case substrings of jax.Device.device_kind
    bf16_flops: float  # dense peak FLOP/s per JAX device
    hbm_bytes: float  # HBM per JAX device (data sheet)
    hbm_bandwidth: float  # bytes/s per JAX device
    source: str  # the data sheet
    # Interconnect bytes/s per device (the data sheets' TPU ICI or GPU NVLink/PCIe figure,
    # all links together): the rate the roofline gives the mesh's collectives.
    link_bandwidth: float = 0.0


GIB = 2**30
CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", "tpu", ("tpu v4",), 275e12, 32 * GIB, 1200e9,
         "https://cloud.google.com/tpu/docs/v4 (per chip: 275 TFLOP/s, 32 GiB, 1200 GBps)",
         link_bandwidth=300e9),  # ICI 2400 Gbps
    Chip("v5e", "tpu", ("tpu v5 lite", "tpu v5e"), 197e12, 16e9, 819e9,
         "https://cloud.google.com/tpu/docs/v5e (per chip: 197 TFLOP/s, 16 GB, 819 GBps)",
         link_bandwidth=200e9),  # ICI 1600 Gbps
    Chip("v5p", "tpu", ("tpu v5p", "tpu v5"), 459e12, 95e9, 2765e9,
         "https://cloud.google.com/tpu/docs/v5p (per chip: 459 TFLOP/s, 95 GB, 2765 GBps)",
         link_bandwidth=600e9),  # ICI 4800 Gbps
    Chip("v6e", "tpu", ("tpu v6",), 918e12, 32e9, 1640e9,
         "https://cloud.google.com/tpu/docs/v6e (per chip: 918 TFLOP/s, 32 GB, 1640 GBps)",
         link_bandwidth=448e9),  # ICI 3584 Gbps
    Chip("h100_pcie", "cuda", ("h100 pcie",), 756e12, 80e9, 2.0e12,
         "https://www.nvidia.com/en-us/data-center/h100/ (PCIe: 1513 TFLOP/s bf16 with "
         "sparsity, 80 GB, 2.0 TB/s)",
         link_bandwidth=128e9),  # PCIe Gen5 x16
    Chip("h100", "cuda", ("h100",), 989.4e12, 80e9, 3.35e12,
         "https://www.nvidia.com/en-us/data-center/h100/ (SXM: 1979 TFLOP/s bf16 with "
         "sparsity, 80 GB HBM3, 3.35 TB/s)",
         link_bandwidth=900e9),  # NVLink 900 GB/s
    Chip("h200", "cuda", ("h200", "gh200"), 989.4e12, 141e9, 4.8e12,
         "https://www.nvidia.com/en-us/data-center/h200/ (SXM: 1979 TFLOP/s bf16 with "
         "sparsity, the H100's compute; 141 GB HBM3e, 4.8 TB/s)",
         link_bandwidth=900e9),  # NVLink 900 GB/s
    Chip("a100", "cuda", ("a100",), 312e12, 80e9, 2.039e12,
         "https://www.nvidia.com/en-us/data-center/a100/ (312 TFLOP/s bf16 dense, 80 GB, "
         "2039 GB/s)",
         link_bandwidth=600e9),  # NVLink 600 GB/s
    Chip("l4", "cuda", ("l4",), 121e12, 24e9, 300e9,
         "https://www.nvidia.com/en-us/data-center/l4/ (242 TFLOP/s bf16 with sparsity, "
         "24 GB, 300 GB/s)",
         link_bandwidth=64e9),  # PCIe Gen4 x16
)}


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The table row of a `jax.Device.device_kind`, None if unknown (CPU)."""
    kind = device_kind.lower()
    for chip in CHIPS.values():  # more specific rows first (h100 pcie before h100)
        if any(k in kind for k in chip.device_kinds):
            return chip
    return None


def published_bf16_peak(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of one device of this `jax.Device.device_kind`, None if unknown."""
    chip = chip_for_device_kind(device_kind)
    return chip.bf16_flops if chip else None


# ----------------------------------------------------------------------------------------
# The roofline
# ----------------------------------------------------------------------------------------

def roofline(chip: Chip, *, model_flops: float, executed_flops: float, hbm_bytes: float | None,
             devices: int, overlapped_bytes: float = 0.0, collective_bytes: float = 0.0,
             async_collective_bytes: float = 0.0) -> dict[str, float | None]:
    """Predicted seconds and MFU of one program run on `devices` devices of `chip`.

    FLOPs are the whole program's (all devices); `hbm_bytes` is per device, None when the
    compiler gave no byte count (the memory term is then left out); `overlapped_bytes` is the
    part of it that moves while the compute runs (matmul instructions, async copies);
    `collective_bytes` (per device) cross the interconnect at `chip.link_bandwidth`, added
    to the step (FSDP's weight gathers and the gradient reductions are not free), and
    `async_collective_bytes` cross it beside the compute (scheduled asynchronously).
    """
    compute_s = executed_flops / devices / chip.bf16_flops

    def over_links(nbytes: float) -> float:
        return nbytes / chip.link_bandwidth if nbytes and chip.link_bandwidth else 0.0

    link_s, async_s = over_links(collective_bytes), over_links(async_collective_bytes)
    memory_s = None if hbm_bytes is None else hbm_bytes / chip.hbm_bandwidth
    bound_s = max(compute_s, memory_s or 0.0, link_s + async_s)
    peak = devices * chip.bf16_flops
    if memory_s is None:  # only the compute bound is known
        return {"compute_s": compute_s, "memory_s": None, "collective_s": link_s,
                "collective_async_s": async_s, "step_s": None, "step_s_bound": bound_s,
                "mfu": None, "mfu_bound": model_flops / (bound_s * peak)}
    overlap_s = min(overlapped_bytes / chip.hbm_bandwidth, memory_s)
    step_s = max(compute_s, overlap_s, async_s) + memory_s - overlap_s + link_s
    return {"compute_s": compute_s, "memory_s": memory_s, "overlapped_memory_s": overlap_s,
            "collective_s": link_s, "collective_async_s": async_s, "step_s": step_s,
            "step_s_bound": bound_s,
            "mfu": model_flops / (step_s * peak), "mfu_bound": model_flops / (bound_s * peak)}
