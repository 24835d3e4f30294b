"""Compile a training config ahead of time for a TPU or GPU slice (or this machine) and check it fits.

    python -m mypt_jax.preflight --config=configs/phase3a1_gamma.py --topology v5p-8 \\
        [--config.field=value ...] [--json OUT]
    python -m mypt_jax.preflight --config_file tests/fixtures/upstream_configs/full/phase3_chat_sft.json \\
        --topology v5p-8 \\
        [--batch_size N ...] [--config.field=value ...]

The second form takes the upstream train.py's recipe flags, translated as `mypt_jax.train`
translates them (interop/upstream_cli.py, same precedence); `--init_from_model` and
`--dataset_dir` are taken as named, never looked for, since the preflight reads neither.

Compiles what `mypt_jax.train` would run, with the config's mesh, precision, remat and batch:
the train step for every batch shape the padding-free layout can produce (one per length
bucket, `batching.step_shapes`), the eval step at the largest shape, and the generation
loop the eval prompts use. Without `--topology` it compiles for this machine's devices.

Per program: compile seconds; XLA's per-device memory (arguments, outputs, temporaries,
code; `device_memory.py`) against what the device holds; fits or not; XLA's FLOPs and bytes
accessed (as XLA reports them: a scanned layer body once); the HBM bytes every instruction
moves, over all loop iterations (`hlo_cost.py`); the model's FLOPs and a roofline step time
and MFU (`chips.py` states the formula). FLOPs always come from the model's formula.

Host memory (`host`): an asynchronous checkpoint copies the train state to host memory while
the next step runs; CPU runs save synchronously, and there the programs' own memory is the
host's.

Exit status: 0 when everything fits, 1 when something does not (the cheapest change that
fits is named: a mesh, a remat policy, or a smaller per-device batch through
grad_accum_steps, tried in that order), 2 for a config error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from ml_collections import config_dict

from mypt_jax.interop import upstream_cli
from mypt_jax.model.param_table import param_shapes
from mypt_jax.parallel import device_mesh, sharding
from mypt_jax.preflight import programs as tp
from mypt_jax.preflight import run_model
from mypt_jax.preflight import topology as topo_lib
from mypt_jax.preflight.compiling import (  # noqa: F401 - report.X names kept for callers
    Target,
    add_roofline,
    compile_program,
    host_memory_bytes,
    platform_of,
    resolve_for,
    target_for,
)
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import optim
from mypt_jax.training.step import train_step as ts
from mypt_jax.training.step.freeze import Freeze

# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


def host_report(r: cfg_lib.Resolved, mesh, target: Target, results: list[dict]) -> dict[str, Any]:
    """Host memory: the checkpoint staging copy, plus the device programs on a CPU target.

    An asynchronous save stages a copy of the state in host memory while the next steps run.
    CPU runs save synchronously (`checkpoint.py`): their devices' memory is the host's, and
    a staged copy next to a step was what ran a 750M CPU run out of 23 GB. So on CPU the
    peak is the largest program over the local devices, with no staged copy beside it.
    """
    tx, _ = optim.optimizer_from_config(r.config)
    state = tp.bytes_global(ts.abstract_state(tx, r.model_config, mesh))
    cpu = target.chip is None  # device memory is host memory; saves are synchronous
    # orbax copies each unique shard once, on its own host
    staging = 0 if cpu else state // target.hosts
    out: dict[str, Any] = {"state_bytes": state, "checkpoint_staging_bytes": staging}
    if cpu:
        local = len(target.devices) // target.hosts
        worst = max((p["memory"]["required"] for p in results if p.get("memory", {}).get("required")),
                    default=0)
        out["programs_bytes"] = worst * local
        out["peak_bytes"] = worst * local
        out["host_memory_bytes"] = target.host_memory
        out["fits"] = target.host_memory is None or out["peak_bytes"] <= target.host_memory
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
        mesh = cfg_lib.mesh_for(r, target.devices)
        train = tp.programs(r, mesh, target.hosts, ("train",), largest_only=True)[0]
        result = compile_program(train, target)
        flags = " ".join(f"--config.{k}={v}" for k, v in change.items())
        tried.append({"change": flags, "fits": result["fits"]})
        if result["fits"]:
            return {"change": flags, "overrides": change, "train_step": result, "tried": tried}
    return {"change": None, "tried": tried}


def mesh_devices(mesh, target: Target) -> dict[str, Any]:
    """Where each mesh position's device sits (`device_mesh.describe`), and whether that is
    simply the devices in their listed order."""
    out = device_mesh.describe(mesh.devices)
    out["listed_order"] = [d.id for d in mesh.devices.ravel()] == [d.id for d in target.devices]
    return out


def _display_order(result: dict[str, Any]) -> tuple:
    """Train programs first, largest first; then evals, then the generation."""
    shape = result["shape"]
    return (tp.PROGRAM_KINDS.index(result["kind"]),
            -shape.get("rows", 0) * shape.get("length", 0))


def run(config: config_dict.ConfigDict, topology: str | None = None, *,
        find_fix: bool = True, kinds: tuple[str, ...] = tp.PROGRAM_KINDS,
        largest_only: bool = False, progress: Callable[[str], None] | None = None,
        slices: int = 1, compile_threads: int = 8) -> dict[str, Any]:
    """The whole preflight: the programs the run compiles (its shape plan, where the
    dataset is there) compiled and checked, and the run's wall-clock as the curriculum
    preflight models each phase (`run_model`), as one JSON-able dict."""
    target = target_for(topology, slices)
    r = resolve_for(config, target)
    mesh = cfg_lib.mesh_for(r, target.devices)
    plan = run_model.plan_phase(r, mesh, target.hosts, platform_of(target), target.capacity,
                                largest_only)
    results: list[dict[str, Any]] = []
    for program in plan.programs:
        if program.kind not in kinds:
            continue
        results.append(compile_program(program, target))
        if progress:
            progress(f"{program.name}: compiled in {results[-1]['compile_s']:.1f} s, "
                     + ("fits" if results[-1]["fits"] else "does not fit"))
    results.sort(key=_display_order)
    host = host_report(r, mesh, target, results)
    phase = None
    if target.chip is not None:
        by_name = {p["name"]: p for p in results}
        phase = run_model.phase_row(plan, by_name, set(by_name), hosts=target.hosts,
                                    accelerator=True, compile_threads=compile_threads)
    report: dict[str, Any] = {
        "target": {"name": target.name, "devices": len(target.devices), "hosts": target.hosts,
                   "slices": target.slices,
                   "chip": dataclasses.asdict(target.chip) if target.chip else None,
                   "capacity_per_device": target.capacity},
        "mesh": dict(zip(sharding.MESH_AXES, r.mesh_shape, strict=True)),
        "mesh_dcn": dict(zip(sharding.MESH_AXES, r.mesh_dcn_shape, strict=True)),
        "mesh_devices": mesh_devices(mesh, target),
        "model": {"remat": r.model_config.remat, "dtype": r.model_config.dtype,
                  "param_dtype": r.model_config.param_dtype,
                  "params": Freeze().count(param_shapes(r.model_config))[1]},  # tied: wte once
        "batch_size": r.config.batch_size, "grad_accum_steps": r.config.grad_accum_steps,
        "freeze": tp.freeze_savings(r, mesh),
        "programs": results,
        "host": host,
        "phase": phase,
    }
    report["fits"] = all(p["fits"] for p in results) and host.get("fits", True)
    if not report["fits"] and find_fix:
        report["suggestion"] = suggest(r.config, target)
    return report


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def _gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.1f}"


def format_mesh_devices(m: dict[str, Any]) -> list[str]:
    """One line per data index: the fsdp positions in order, each the device id (its torus
    coords), tensor groups in brackets; `|` where the next host's devices begin, `||` the
    next slice's."""
    ids = np.array(m["ids"])
    coords, slices = m.get("coords"), m.get("slice")
    data, fsdp, tensor = ids.shape

    def where(i, j):
        return (slices[i][j][0] if slices else 0, m["process"][i][j][0])

    def cell(i, j, k):
        xyz = "(" + ",".join(map(str, coords[i][j][k])) + ")" if coords else ""
        return f"{ids[i, j, k]}{xyz}"

    legend = "id(x,y,z), x,y,z = torus coords; " if coords else "device ids; "
    lines = [f"mesh devices, data rows x fsdp columns{' x [tensor]' if tensor > 1 else ''} "
             f"({legend}| = next host, || = next slice; listed order: "
             f"{'yes' if m['listed_order'] else 'no'}):"]
    def span(values) -> str:
        lo, hi = min(values), max(values)
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    several_hosts = len({p for row in m["process"] for col in row for p in col}) > 1
    for i in range(data):
        label = f"data {i}"
        if slices:
            label += f" slice {span([s for col in slices[i] for s in col])}"
        if several_hosts:
            label += f" host {span([p for col in m['process'][i] for p in col])}"
        parts: list[str] = []
        for j in range(fsdp):
            if j and where(i, j) != where(i, j - 1):
                parts.append("||" if where(i, j)[0] != where(i, j - 1)[0] else "|")
            group = [cell(i, j, k) for k in range(tensor)]
            parts.append(group[0] if tensor == 1 else "[" + " ".join(group) + "]")
        lines.append(f"  {label}: " + " ".join(parts))
    return lines


def _params(model: dict[str, Any]) -> str:
    return f"{model['params'] / 1e6:.1f}M params | " if "params" in model else ""


def format_report(report: dict[str, Any]) -> str:
    t = report["target"]
    dcn = report.get("mesh_dcn") or {}
    over_dcn = f" over {t['slices']} slices (dcn {dcn})" if t.get("slices", 1) > 1 else ""
    lines = [f"target {t['name']}: {t['devices']} devices, {t['hosts']} host(s), "
             f"{_gib(t['capacity_per_device'])} GiB per device | mesh {report['mesh']}{over_dcn} | "
             f"{_params(report['model'])}remat {report['model']['remat']} | batch "
             f"{report['batch_size']} (accum {report['grad_accum_steps']})"]
    if "mesh_devices" in report:
        lines += format_mesh_devices(report["mesh_devices"])
    lines += [f"{'program':34} {'compile s':>9} {'args':>7} {'temp':>7} {'need':>7} {'GiB of':>7} "
             f"{'fits':>4} {'HBM GB':>7} {'step ms':>8} {'MFU':>5}"]
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
                     f"{_gib(p.get('capacity')):>7} {'yes' if p['fits'] else 'NO':>4} "
                     f"{_gb(p.get('hbm_bytes')):>7} {step:>8} {mfu:>5}")
        if p.get("error"):
            lines.append(f"    {p['error']}")
    fz = report.get("freeze")
    if fz:
        lines.append(
            f"freeze: {fz['freeze_layers']} of {fz['n_layer']} blocks, embeddings "
            f"{'frozen' if fz['freeze_embeddings'] else 'trained'}: {fz['trainable_params'] / 1e6:.1f}M "
            f"of {fz['total_params'] / 1e6:.1f}M parameters train; optimizer state "
            f"{_gib(fz['opt_state_bytes'])} GiB per device ({_gib(fz['opt_state_bytes_unfrozen'])} "
            "GiB unfrozen)")
    h = report["host"]
    line = f"host: checkpoint staging {_gib(h['checkpoint_staging_bytes'])} GiB per host"
    if "peak_bytes" in h:
        line += (f", peak {_gib(h['peak_bytes'])} GiB (programs; saves are synchronous) of "
                 f"{_gib(h['host_memory_bytes'])} GiB RAM")
    lines.append(line)
    if report.get("phase"):
        lines.append(run_model.describe(report["phase"]))
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


def build_parser() -> argparse.ArgumentParser:
    """The preflight's flags; `--config.field=value` overrides are left for `main`."""
    upstream = upstream_cli.build_parser().format_help().split("options:\n", 1)[-1]
    p = argparse.ArgumentParser(
        prog="python -m mypt_jax.preflight", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="the upstream train.py's recipe flags, as mypt_jax.train takes them "
        f"(--init_from_model and --dataset_dir are not looked for):\n{upstream.rstrip()}")
    p.add_argument("--config", action="append",
                   help="preset file (configs/*.py[:arg]); given more than once, the phases of "
                   "a curriculum in order, and the report is the whole curriculum's wall-clock; "
                   "with the upstream's --config_file and flags, configs/base.py by default")
    p.add_argument("--root", default="", help="where relative dataset_dir paths live (the "
                   "pipeline's --root)")
    p.add_argument("--compile_threads", type=int, default=8,
                   help="concurrent compiles assumed for the compile wall-clock (a TPU VM host "
                   "has the cores)")
    p.add_argument("--topology", default="", help=f"one of {sorted(topo_lib.TOPOLOGIES)}; "
                   "empty = this machine's devices")
    p.add_argument("--slices", type=int, default=1,
                   help="compile for this many slices of --topology joined over DCN (TPU only; "
                   "set the --config.mesh_dcn_* fields to match)")
    p.add_argument("--json", default="", help="also write the report here")
    p.add_argument("--programs", default=",".join(tp.PROGRAM_KINDS),
                   help="which programs to compile, of " + ",".join(tp.PROGRAM_KINDS))
    p.add_argument("--largest_shape_only", action="store_true",
                   help="compile the train step for the largest batch shape only")
    p.add_argument("--no_suggest", action="store_true",
                   help="do not search for a change that fits when something does not")
    return p


def load_configs(paths: list[str], overrides: list[str], root: str,
                 upstream: upstream_cli.Translation | None,
                 keep: frozenset[str]) -> list[config_dict.ConfigDict]:
    """The presets with their `--config.field` overrides, under the upstream recipe as
    `mypt_jax.train` applies it, relative dataset_dir paths under `root`."""
    from mypt_jax.data import inspect as data_inspect

    configs = [data_inspect.load_config(path, overrides) for path in paths]
    if upstream is not None:
        if len(configs) > 1:
            raise ValueError("the upstream's --config_file and flags are one phase's recipe: "
                             "give one --config with them, or none (configs/base.py)")
        configs = [upstream_cli.apply(configs[0], upstream, set(keep))]
    for c in configs:
        if root and c.dataset_dir and not os.path.isabs(c.dataset_dir):
            c.dataset_dir = os.path.join(root, c.dataset_dir)
    return configs


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # the upstream train.py's recipe flags, taken off as mypt_jax.train takes them
        upstream, ours, keep = upstream_cli.from_argv(argv, check_init=False)
    except upstream_cli.UpstreamConfigError as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2
    p = build_parser()
    args, rest = p.parse_known_args(ours)
    if not args.config:
        p.error("--config is required (or the upstream's --config_file and flags)")
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {bad}")
    kinds = tuple(k for k in args.programs.split(",") if k)
    if not kinds or set(kinds) - set(tp.PROGRAM_KINDS):
        p.error(f"--programs {args.programs!r}: expected a comma list of {tp.PROGRAM_KINDS}")
    if args.topology:
        try:
            topo_lib.prepare_environment(topo_lib.get(args.topology))
        except topo_lib.TopologyError as e:
            print(f"preflight: {e}", file=sys.stderr)
            return 2
    def progress(m):
        print(m, file=sys.stderr, flush=True)

    try:
        configs = load_configs(args.config, rest, args.root, upstream, keep)
        if upstream is not None:
            print(upstream.summary, file=sys.stderr, flush=True)
        if len(configs) > 1:
            from mypt_jax.preflight import curriculum

            report = curriculum.run(configs, args.topology or None,
                                    compile_threads=args.compile_threads, progress=progress)
            print(curriculum.format_table(report))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rounded(report), f, indent=2)
            return 0
        report = run(configs[0], args.topology or None, find_fix=not args.no_suggest,
                     kinds=kinds, largest_only=args.largest_shape_only, slices=args.slices,
                     progress=progress, compile_threads=args.compile_threads)
    except (cfg_lib.ConfigError, topo_lib.TopologyError, ValueError, FileNotFoundError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 2
    report["command"] = " ".join(["python -m mypt_jax.preflight", *argv])
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounded(report), f, indent=2)
    return 0 if report["fits"] else 1
