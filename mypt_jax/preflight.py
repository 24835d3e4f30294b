"""Compile a training config ahead of time for a TPU or GPU slice (or this machine) and check it fits.

    python -m mypt_jax.preflight --config=configs/phase3a1_gamma.py --topology v5p-8 \\
        [--config.field=value ...] [--json OUT]

Compiles what `mypt_jax.train` would run, with the config's mesh, precision, remat and batch:
the train step for every batch shape the padding-free layout can produce (one per length
bucket, `batching.step_shapes`), the eval step at the largest shape, and the generation
loop the eval prompts use. Without `--topology` it compiles for this machine's devices.

Per program: compile seconds; XLA's per-device memory (arguments, outputs, temporaries,
code; `device_memory.py`) against what the device holds; fits or not; XLA's FLOPs and bytes
accessed; the model's FLOPs and a roofline step time and MFU (`chips.py` states the formula).
XLA's cost analysis counts a scanned layer body once, so for train steps the bytes are
corrected by two extra compiles with one and two unrolled layers: every per-layer cost is
linear in depth, so bytes(L) = bytes(1) + (L - 1) * (bytes(2) - bytes(1)). FLOPs always come
from the model's formula.

Host memory: an asynchronous checkpoint copies the train state to host memory while the
next step runs; on CPU that is the same memory as the devices'. Reported as `host`.

Exit status: 0 when everything fits, 1 when something does not (the cheapest change that
fits is named: a mesh, a remat policy, or a smaller per-device batch through
grad_accum_steps, tried in that order), 2 for a config error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from mypt_jax import batching, chips, optim, sharding
from mypt_jax import config as cfg_lib
from mypt_jax import device_memory as dm
from mypt_jax import topology as topo_lib
from mypt_jax import train_step as ts
from mypt_jax.model import ModelConfig

# ----------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # a topology name, or "local"
    devices: list
    hosts: int
    chip: chips.Chip | None  # None: this machine's CPU (no roofline)
    capacity: int | None  # bytes a program may use per device; None = host memory decides
    host_memory: int | None  # bytes of RAM of this machine (local targets only)


def host_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def target_for(name: str | None) -> Target:
    """Compile-only devices of a named slice, or this machine's devices."""
    if name:
        topo = topo_lib.get(name)
        devices = topo_lib.compile_only_devices(topo)
        capacity = topo.chip.hbm_bytes
        if topo.platform == "cuda":
            capacity *= dm.GPU_MEM_FRACTION
        return Target(topo.name, devices, topo.hosts, topo.chip, int(capacity), None)
    devices = jax.devices()
    chip = chips.chip_for_device_kind(devices[0].device_kind)
    return Target("local", devices, jax.process_count(), chip,
                  dm.device_capacity(devices[0]), host_memory_bytes())


# ----------------------------------------------------------------------------------------
# Programs
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    kind: str  # "train" | "eval" | "decode"
    lower: Callable[[ModelConfig], Any]  # model config -> jax.stages.Lowered
    model_flops: float  # all devices
    executed_flops: float
    hbm_bytes_model: float | None  # per device, where we model it instead of asking XLA
    resident: int  # bytes per device alive during the program but not its argument
    shape: dict[str, Any]


def _bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (its shards)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def _bytes_global(tree: Any) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _sharded_batch(shape: batching.BatchShape, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    bsh = ts.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
            for k, v in batching.abstract_batch(shape).items()}


def _replicated(x: Any, mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=ts.replicated(mesh))


def _attention(mc: ModelConfig, mesh, prob_dropout: bool) -> str:
    """The full-sequence attention kernel the program runs (attention.py's choice)."""
    from mypt_jax import attention

    return attention.resolve(mc, attention.platform_of(mesh), prob_dropout=prob_dropout)[0]


def _train_program(r: cfg_lib.Resolved, mesh, shape: batching.BatchShape) -> Program:
    c, mc = r.config, r.model_config
    tx, schedule = optim.optimizer_from_config(c)

    def lower(mc: ModelConfig):
        step = ts.make_train_step(ts.model_def(mc), tx, schedule, mesh, seed=c.seed,
                                  grad_accum_steps=c.grad_accum_steps,
                                  loss_chunk_size=c.loss_chunk_size)
        return step.lower(ts.abstract_state(tx, mc, mesh), _sharded_batch(shape, mesh))

    flops = chips.train_step_flops(mc, shape.rows, shape.length, shape.positions or None)
    kernel = _attention(mc, mesh, mc.dropout > 0 and mc.attention_prob_dropout)
    return Program(f"train_step {shape} {kernel}", "train", lower, flops["total"],
                   chips.remat_flops(flops, mc.remat), None, 0, dataclasses.asdict(shape))


def _eval_program(r: cfg_lib.Resolved, mesh, shape: batching.BatchShape, resident: int) -> Program:
    c, mc = r.config, r.model_config

    def lower(mc: ModelConfig):
        step = ts.make_eval_step(ts.model_def(mc), mesh, loss_chunk_size=c.loss_chunk_size)
        return step.lower(ts.abstract_params(mc, mesh), _sharded_batch(shape, mesh))

    flops = chips.forward_flops(mc, shape.rows, shape.length, shape.positions or None)
    kernel = _attention(mc, mesh, False)
    return Program(f"eval_step {shape} {kernel}", "eval", lower, flops, flops, None, resident,
                   dataclasses.asdict(shape))


def _decode_program(r: cfg_lib.Resolved, mesh, resident: int) -> Program | None:
    """The greedy generation loop of the eval prompts, as `evaluate.evaluate` calls it."""
    from flax import nnx

    from mypt_jax import decode, evaluate

    c, mc = r.config, r.model_config
    if not c.eval_prompts_file:
        return None
    prompts = evaluate.load_eval_prompts(c.eval_prompts_file).prompts
    ids = decode.fit_prompts([r.tokenizer.encode(p) for p in prompts.values()],
                             block_size=mc.block_size, max_new_tokens=c.eval_max_new_tokens)
    B, P = len(ids), decode.prompt_bucket(max(len(x) for x in ids), mc.block_size)
    N = decode.new_tokens_bucket(c.eval_max_new_tokens)
    stops = len(decode.default_stop_ids(r.tokenizer))
    width = max(decode.STOP_SLOTS, -(-stops // decode.STOP_SLOTS) * decode.STOP_SLOTS)

    def lower(mc: ModelConfig):
        mdef = ts.model_def(mc)
        graphdef, state = nnx.split(mdef.merge(ts.abstract_params(mc, mesh)))
        state = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else _replicated(x, mesh), state)

        def sds(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=ts.replicated(mesh))

        sampling = {k: sds((), v.dtype) for k, v in decode.GREEDY.arrays().items()}
        key = jax.eval_shape(lambda: jax.random.key(0))
        return decode._generate_jit.lower(
            graphdef, state, sds((B, P), jnp.int32), sds((B,), jnp.int32), sds((), jnp.int32),
            sampling, sds((width,), jnp.int32), sds((), key.dtype), sds((), jnp.bool_),
            max_new_cap=N, penalty_window=decode.PENALTY_WINDOW)

    # Every generated token reads all weights (storage dtype) and the KV cache once.
    params = ts.abstract_params(mc, mesh)
    cache = 2 * mc.n_layer * B * (P + N) * mc.n_embd * jnp.dtype(mc.dtype).itemsize
    steps = N + 1  # the prefill, then one step per new token
    hbm = steps * (_bytes_global(params) + cache) / mesh.size
    flops = B * (P + N) * chips.decode_flops_per_token(mc, (P + N) // 2)
    return Program(f"generate {B}x{P}+{N}", "decode", lower, flops, flops, hbm, resident,
                   {"rows": B, "prompt": P, "new_tokens": N})


PROGRAM_KINDS = ("train", "eval", "decode")


def programs(r: cfg_lib.Resolved, mesh, hosts: int, kinds: tuple[str, ...] = PROGRAM_KINDS,
             largest_only: bool = False) -> list[Program]:
    """What `mypt_jax.train` compiles for this config (of `kinds`), largest train shape first.

    `largest_only`: only the largest train shape (the most memory a step needs).
    """
    shapes = batching.step_shapes(r.config, data_shards=mesh.shape["data"] * mesh.shape["fsdp"],
                                  process_count=hosts)
    shapes = sorted(shapes, key=lambda s: -s.rows * s.length)
    if largest_only:
        shapes = shapes[:1]
    tx, _ = optim.optimizer_from_config(r.config)
    opt_resident = _bytes_per_device(ts.abstract_state(tx, r.model_config, mesh).opt_state)
    out = [_train_program(r, mesh, s) for s in shapes] if "train" in kinds else []
    if "eval" in kinds:
        out.append(_eval_program(r, mesh, shapes[0], opt_resident))
    decode_program = _decode_program(r, mesh, opt_resident) if "decode" in kinds else None
    if decode_program is not None:
        out.append(decode_program)
    return out


# ----------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------


def _xla_cost(compiled: Any) -> dict[str, float] | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - compile-only GPU clients give none
        return None
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    if not cost:
        return None
    return {"flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0))}


def compile_program(program: Program, mc: ModelConfig, target: Target,
                    bytes_factor: float = 1.0) -> dict[str, Any]:
    """Compiles one program for the target; its memory, fit, costs and roofline.

    `bytes_factor` scales XLA's bytes accessed for the layers its scanned body leaves out
    (`layer_bytes_factor`).
    """
    out: dict[str, Any] = {"name": program.name, "kind": program.kind, "shape": program.shape}
    t0 = time.perf_counter()
    try:
        compiled = program.lower(mc).compile()
    except Exception as e:  # noqa: BLE001 - an out-of-memory compile is a result, not a crash
        if not dm.is_oom(e):
            raise
        out["compile_s"] = time.perf_counter() - t0
        need_have = dm.parse_oom(str(e))
        out["fits"] = False
        out["error"] = str(e).splitlines()[0][:300]
        if need_have:
            out["memory"] = {"temporaries": need_have[0]}
            out["capacity"] = need_have[1]
        return out
    out["compile_s"] = time.perf_counter() - t0
    report = dm.from_compiled(compiled, program.resident)
    out["memory"] = report.to_dict() if report else None
    out["capacity"] = target.capacity
    problem = dm.check(report, target.capacity, program.name)
    out["fits"] = problem is None
    if problem:
        out["error"] = problem
    out["xla_cost"] = _xla_cost(compiled)
    add_roofline(out, program, mc, target, bytes_factor)
    return out


def add_roofline(result: dict[str, Any], program: Program, mc: ModelConfig, target: Target,
                 bytes_factor: float = 1.0) -> None:
    result["model_flops"] = program.model_flops
    result["executed_flops"] = program.executed_flops
    hbm = program.hbm_bytes_model
    if hbm is None and result.get("xla_cost") is not None:
        hbm = result["xla_cost"]["bytes_accessed"] * (bytes_factor if mc.scan_layers else 1.0)
    result["hbm_bytes"] = hbm
    if target.chip is not None:
        result["roofline"] = chips.roofline(
            target.chip, model_flops=program.model_flops, executed_flops=program.executed_flops,
            hbm_bytes=hbm, devices=len(target.devices))


def layer_bytes_factor(program: Program, mc: ModelConfig, scanned_bytes: float) -> float | None:
    """All-layer over scanned bytes accessed of a train step, from 1- and 2-layer compiles.

    Applied to every train and eval program of the run: it assumes the share of per-layer
    traffic is the same at every batch shape (exact for the shape it was measured on).
    """
    if not mc.scan_layers or mc.n_layer == 1 or not scanned_bytes:
        return None
    costs = []
    for n in (1, 2):
        cost = _xla_cost(program.lower(mc.replace(n_layer=n, scan_layers=False)).compile())
        if cost is None:
            return None
        costs.append(cost["bytes_accessed"])
    all_layers = costs[0] + (mc.n_layer - 1) * (costs[1] - costs[0])
    return all_layers / scanned_bytes


def check_train_step(step_fn: Any, r: cfg_lib.Resolved, tx: Any, mesh,
                     capacity: int | None = None) -> str | None:
    """The preflight's check at the start of a run on a real accelerator: the jitted step,
    compiled here for its largest batch shape, against the device's allocator limit.

    None when it fits or when the backend reports no limit (CPU); else the problem, naming
    the fields that change it.
    """
    capacity = capacity or dm.device_capacity(mesh.devices.flat[0])
    if capacity is None:
        return None
    shape = max(batching.step_shapes(r.config, data_shards=mesh.shape["data"] * mesh.shape["fsdp"],
                                     process_count=jax.process_count()),
                key=lambda s: s.rows * s.length)
    try:
        compiled = step_fn.lower(ts.abstract_state(tx, r.model_config, mesh),
                                 _sharded_batch(shape, mesh)).compile()
    except Exception as e:  # noqa: BLE001
        if not dm.is_oom(e):
            raise
        return f"the train step at batch shape {shape} does not fit: {str(e).splitlines()[0]}"
    problem = dm.check(dm.from_compiled(compiled), capacity, f"the train step at batch shape {shape}")
    return problem


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


def resolve_for(config: config_dict.ConfigDict, target: Target) -> cfg_lib.Resolved:
    return cfg_lib.resolve(config, config.workdir or "preflight", num_devices=len(target.devices),
                           process_count=target.hosts, read_files=False)


def host_report(r: cfg_lib.Resolved, mesh, target: Target, results: list[dict]) -> dict[str, Any]:
    """Host memory: the checkpoint staging copy, plus the device programs on a CPU target."""
    tx, _ = optim.optimizer_from_config(r.config)
    state = _bytes_global(ts.abstract_state(tx, r.model_config, mesh))
    staging = state // target.hosts  # orbax copies each unique shard once, on its own host
    out: dict[str, Any] = {"state_bytes": state, "checkpoint_staging_bytes": staging}
    if target.chip is None:  # CPU: device memory is host memory
        local = len(target.devices) // target.hosts
        worst = max((p["memory"]["required"] for p in results if p.get("memory", {}).get("required")),
                    default=0)
        out["programs_bytes"] = worst * local
        out["peak_bytes"] = worst * local + staging
        out["host_memory_bytes"] = target.host_memory
        out["fits"] = target.host_memory is None or out["peak_bytes"] <= target.host_memory
    return out


def bucket_mix(r: cfg_lib.Resolved, layout: batching.Layout,
               batches: int) -> dict[batching.BatchShape, float] | None:
    """Share of train steps per batch shape, from the first `batches` batches of the dataset."""
    from mypt_jax import data, data_inspect

    if batches <= 0 or not os.path.isdir(r.config.dataset_dir or ""):
        return None
    it = data.make_iterator(r.config.dataset_dir, "train", tokenizer=r.tokenizer,
                            row_stats=True, process_index=0, process_count=1,
                            **data_inspect.iterator_kwargs(r.config))
    counts: dict[batching.BatchShape, int] = {}
    try:
        for _ in range(batches):
            _, info = batching.shape_batch(next(it), layout, pad_id=r.tokenizer.eot_id)
            counts[info.shape] = counts.get(info.shape, 0) + 1
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    return {k: v / batches for k, v in counts.items()}


def phase_time(r: cfg_lib.Resolved, target: Target, results: list[dict],
               mix: dict[batching.BatchShape, float] | None) -> dict[str, Any] | None:
    """Predicted seconds of the config's max_iters steps (and its evals), from the roofline.

    Padded: every step at the largest shape. Padding-free: the dataset's shape mix, each
    shape's compute from the FLOP formula and its memory term from its length bucket's
    compiled step (which projects every position: an upper bound; the largest shape's when
    only that one was compiled).
    """
    if target.chip is None:
        return None
    c, mc = r.config, r.model_config
    train = [p for p in results if p["kind"] == "train" and "roofline" in p]
    if not train:
        return None
    by_length = {p["shape"]["length"]: p for p in train}
    largest = train[0]
    evals = c.max_iters // c.eval_interval + 1
    bound_only = largest["roofline"]["step_s"] is None  # no bytes: compute bound only

    def step_s(roof: dict) -> float:
        return roof["step_s_bound"] if bound_only else roof["step_s"]

    per_eval = sum(step_s(p["roofline"]) * (c.eval_iters if p["kind"] == "eval" else 1)
                   for p in results if p["kind"] in ("eval", "decode") and "roofline" in p)
    out: dict[str, Any] = {
        "max_iters": c.max_iters, "evals": evals, "eval_s": per_eval,
        "padded_train_s": c.max_iters * step_s(largest["roofline"]), "compute_bound_only": bound_only,
    }
    if mix:
        mean = 0.0
        for shape, share in mix.items():
            flops = chips.train_step_flops(mc, shape.rows, shape.length, shape.positions or None)
            base = by_length.get(shape.length, largest)["roofline"]
            memory = None if base["memory_s"] is None else base["memory_s"] * target.chip.hbm_bandwidth
            t = chips.roofline(target.chip, model_flops=flops["total"],
                               executed_flops=chips.remat_flops(flops, mc.remat),
                               hbm_bytes=memory, devices=len(target.devices))
            mean += share * step_s(t)
        out["shape_mix"] = {str(k): v for k, v in sorted(mix.items(), key=lambda kv: -kv[1])}
        out["padding_free_train_s"] = c.max_iters * mean
    out["total_padded_s"] = out["padded_train_s"] + evals * per_eval
    if "padding_free_train_s" in out:
        out["total_padding_free_s"] = out["padding_free_train_s"] + evals * per_eval
    return out


# The changes tried, in order, when a program does not fit: a mesh that shards the state
# over every device, remat that saves the matmuls, then a smaller per-device batch at the
# same global batch, then full remat, then both.
def _candidates(c: config_dict.ConfigDict) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if (c.mesh_data, c.mesh_fsdp) != (1, -1):
        out.append({"mesh_data": 1, "mesh_fsdp": -1})
    for remat in ("dots", "full"):
        if remat != c.remat and not (c.remat == "full" and remat == "dots"):
            out.append({"remat": remat})
    for k in (2, 4, 8):
        out.append({"grad_accum_steps": c.grad_accum_steps * k})
        out.append({"grad_accum_steps": c.grad_accum_steps * k, "remat": "full"})
    return out


def suggest(config: config_dict.ConfigDict, target: Target) -> dict[str, Any] | None:
    """The first change (in `_candidates` order) whose largest train step fits."""
    tried = []
    for change in _candidates(config):
        c = config_dict.ConfigDict(config.to_dict())
        for k, v in change.items():
            c[k] = v
        try:
            r = resolve_for(c, target)
        except cfg_lib.ConfigError:
            continue  # e.g. a microbatch the mesh cannot split
        mesh = sharding.make_mesh(r.mesh_shape, devices=target.devices)
        train = programs(r, mesh, target.hosts, ("train",), largest_only=True)[0]
        result = compile_program(train, r.model_config, target)
        flags = " ".join(f"--config.{k}={v}" for k, v in change.items())
        tried.append({"change": flags, "fits": result["fits"]})
        if result["fits"]:
            return {"change": flags, "overrides": change, "train_step": result, "tried": tried}
    return {"change": None, "tried": tried}


def run(config: config_dict.ConfigDict, topology: str | None = None, *,
        layer_cost: bool = True, mix_batches: int = 200, find_fix: bool = True,
        kinds: tuple[str, ...] = PROGRAM_KINDS, largest_only: bool = False,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole preflight: every program compiled and checked, as one JSON-able dict."""
    target = target_for(topology)
    r = resolve_for(config, target)
    mesh = sharding.make_mesh(r.mesh_shape, devices=target.devices)
    results: list[dict[str, Any]] = []
    factor = 1.0
    for program in programs(r, mesh, target.hosts, kinds, largest_only):
        results.append(compile_program(program, r.model_config, target, factor))
        if progress:
            progress(f"{program.name}: compiled in {results[-1]['compile_s']:.1f} s, "
                     + ("fits" if results[-1]["fits"] else "does not fit"))
        first = results[-1]
        if layer_cost and len(results) == 1 and program.kind == "train" and first.get("xla_cost"):
            t0 = time.perf_counter()
            factor = layer_bytes_factor(program, r.model_config,
                                        first["xla_cost"]["bytes_accessed"]) or 1.0
            add_roofline(first, program, r.model_config, target, factor)
            first["layer_bytes_factor"] = factor
            if progress:
                progress(f"bytes accessed over all layers: x{factor:.2f} of XLA's scanned count "
                         f"(1- and 2-layer compiles, {time.perf_counter() - t0:.1f} s)")
    layout = batching.layout_from_config(
        r.config, data_shards=mesh.shape["data"] * mesh.shape["fsdp"], process_count=target.hosts)
    host = host_report(r, mesh, target, results)
    report: dict[str, Any] = {
        "target": {"name": target.name, "devices": len(target.devices), "hosts": target.hosts,
                   "chip": dataclasses.asdict(target.chip) if target.chip else None,
                   "capacity_per_device": target.capacity},
        "mesh": dict(zip(sharding.MESH_AXES, r.mesh_shape, strict=True)),
        "model": {"remat": r.model_config.remat, "dtype": r.model_config.dtype,
                  "param_dtype": r.model_config.param_dtype},
        "batch_size": r.config.batch_size, "grad_accum_steps": r.config.grad_accum_steps,
        "programs": results,
        "host": host,
        "phase": phase_time(r, target, results, bucket_mix(r, layout, mix_batches)),
    }
    report["fits"] = all(p["fits"] for p in results) and host.get("fits", True)
    if not report["fits"] and find_fix:
        report["suggestion"] = suggest(r.config, target)
    return report


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def format_report(report: dict[str, Any]) -> str:
    t = report["target"]
    lines = [f"target {t['name']}: {t['devices']} devices, {t['hosts']} host(s), "
             f"{_gib(t['capacity_per_device'])} GiB per device | mesh {report['mesh']} | "
             f"remat {report['model']['remat']} | batch {report['batch_size']} "
             f"(accum {report['grad_accum_steps']})",
             f"{'program':34} {'compile s':>9} {'args':>7} {'temp':>7} {'need':>7} {'GiB of':>7} "
             f"{'fits':>4} {'step ms':>8} {'MFU':>5}"]
    for p in report["programs"]:
        m = p.get("memory") or {}
        roof = p.get("roofline") or {}
        if roof.get("step_s") is not None:
            step, mfu = f"{roof['step_s'] * 1e3:.1f}", f"{roof['mfu']:.0%}"
        elif roof:  # compute bound only, marked "<"
            step, mfu = f">{roof['step_s_bound'] * 1e3:.1f}", f"<{roof['mfu_bound']:.0%}"
        else:
            step = mfu = "-"
        lines.append(f"{p['name'][:34]:34} {p['compile_s']:9.1f} {_gib(m.get('arguments')):>7} "
                     f"{_gib(m.get('temporaries')):>7} {_gib(m.get('required')):>7} "
                     f"{_gib(p.get('capacity')):>7} {'yes' if p['fits'] else 'NO':>4} {step:>8} "
                     f"{mfu:>5}")
        if p.get("error"):
            lines.append(f"    {p['error']}")
    h = report["host"]
    line = f"host: checkpoint staging {_gib(h['checkpoint_staging_bytes'])} GiB per host"
    if "peak_bytes" in h:
        line += (f", peak {_gib(h['peak_bytes'])} GiB (programs + staging) of "
                 f"{_gib(h['host_memory_bytes'])} GiB RAM")
    lines.append(line)
    ph = report.get("phase")
    if ph:
        text = (f"phase: {ph['max_iters']} steps padded {ph['padded_train_s'] / 60:.1f} min")
        if ph["compute_bound_only"]:
            text = text.replace("phase:", "phase (compute bound, no bytes from XLA):")
        if "padding_free_train_s" in ph:
            text += f", padding-free {ph['padding_free_train_s'] / 60:.1f} min"
        text += f"; {ph['evals']} evals {ph['evals'] * ph['eval_s'] / 60:.1f} min"
        lines.append(text)
    if report["fits"]:
        lines.append("fits")
    else:
        s = report.get("suggestion") or {}
        lines.append("DOES NOT FIT" + (f"; cheapest change that fits: {s['change']}"
                                       if s.get("change") else "; no tried change fits"))
    return "\n".join(lines)


def rounded(tree: Any, digits: int = 4) -> Any:
    if isinstance(tree, dict):
        return {k: rounded(v, digits) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [rounded(v, digits) for v in tree]
    if isinstance(tree, float) and math.isfinite(tree):
        return float(f"{tree:.{digits}g}")
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    from mypt_jax import data_inspect

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="preset file (configs/*.py[:arg])")
    p.add_argument("--topology", default="", help=f"one of {sorted(topo_lib.TOPOLOGIES)}; "
                   "empty = this machine's devices")
    p.add_argument("--json", default="", help="also write the report here")
    p.add_argument("--mix_batches", type=int, default=200,
                   help="train batches read from the dataset (if present) for the shape mix")
    p.add_argument("--no_layer_cost", action="store_true",
                   help="skip the 1- and 2-layer compiles that correct XLA's bytes accessed")
    p.add_argument("--programs", default=",".join(PROGRAM_KINDS),
                   help="which programs to compile, of " + ",".join(PROGRAM_KINDS))
    p.add_argument("--largest_shape_only", action="store_true",
                   help="compile the train step for the largest batch shape only")
    p.add_argument("--no_suggest", action="store_true",
                   help="do not search for a change that fits when something does not")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {bad}")
    kinds = tuple(k for k in args.programs.split(",") if k)
    if not kinds or set(kinds) - set(PROGRAM_KINDS):
        p.error(f"--programs {args.programs!r}: expected a comma list of {PROGRAM_KINDS}")
    if args.topology:
        try:
            topo_lib.prepare_environment(topo_lib.get(args.topology))
        except topo_lib.TopologyError as e:
            print(f"preflight: {e}", file=sys.stderr)
            return 2
    try:
        config = data_inspect.load_config(args.config, rest)
        report = run(config, args.topology or None, layer_cost=not args.no_layer_cost,
                     mix_batches=args.mix_batches, find_fix=not args.no_suggest, kinds=kinds,
                     largest_only=args.largest_shape_only,
                     progress=lambda m: print(m, file=sys.stderr, flush=True))
    except (cfg_lib.ConfigError, topo_lib.TopologyError, ValueError, FileNotFoundError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2
    report["command"] = " ".join(["python -m mypt_jax.preflight", *(argv or sys.argv[1:])])
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounded(report), f, indent=2)
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
