"""Phase 3a end to end, one command per phase: the seed document's Steps 1-4 with our tools.

    python -m mypt_jax.pipeline --phase 3a1_alpha|3a1_beta|3a1_gamma|3a2|all
        [--preset real|cpu] [--root DIR] [--init_from PATH] [--replay_share F]
        [--steps generate,mix,prepare,train,test] [--handoff memory|disk] [--distributed]
        [--set field=value ...]

Per phase: Step 1 generates its datasets (and those it replays) and mixes them, Step 2
prepares the episode files, Step 3 trains (from the previous phase's run, or `--init_from`),
Step 4 answers the phase's test prompts greedily. A step whose outputs are complete is
skipped and says so: a generated file equal to what the generator yields, a mix whose
sidecar names the same inputs and whose line count matches, a prepared dataset whose
metadata names the same input and record count, a run whose checkpoint at max_iters is
marked finished. Everything lives under `--root` (default: the current directory) in the
seed document's layout (`data/sft_format_lock_alpha/...`, `data/sft_ready/phase3a1_alpha`).

`--phase all` is one job: every phase's Steps 1-2 first, then each phase's Steps 3-4 in
order. Each phase starts from the previous one's weights as they are on the devices, and
answers its test prompts from them, while the previous phase's exports and final checkpoint
are written in the background (training/handoff.py). On accelerators with one process, the
next phase's programs compile meanwhile (training/next_phase.py). A phase's summary is made
once its writes are on disk. That is bit-identical to reading the weights back from the
previous run (`--handoff disk`, what a process per phase does). With several processes,
pass `--steps train` (`--distributed` forces jax.distributed on).

Mixes: the seed commands concatenate their inputs whole (100% + 100%) and shuffle, and so
do we by default; `--replay_share 0.15` makes the replayed inputs 15% of the mix instead.
The CPU preset replays earlier phases' train splits in place of the seed's whole files, so
that no val split watched for forgetting is trained on (`curriculum/replay.py`).

Presets: `real` is `configs/phase3a1_*.py` / `configs/phase3a2.py` (750M model); alpha starts
from `checkpoints/domain_v5_sft_ready` under the root, which you create from the upstream
checkpoint with `python -m mypt_jax.convert import` (after `init-special` if its tag rows
are untrained). `cpu` is `configs/pipeline_cpu.py`: a tiny model that trains alpha from
scratch unless `--init_from` is given.

At the end a summary is printed and written as JSON next to each phase's training log
(`<log>.summary.json`, with the loss curve `<log>.loss.png`; `--phase all` also draws the
phases one after another in `logs/pipeline_all_<preset>.loss.png`); every number in it is
read back from the files the steps wrote.
"""


from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mypt_jax.curriculum import replay
from mypt_jax.curriculum.model_steps import (
    SKIPPED,
    PhaseRun,
    is_main,
    question,
    test_step,
    train_step,
)
from mypt_jax.curriculum.phases import (
    BASE_CHECKPOINT,
    GENERATED,
    MIX_SEED,
    PHASES,
    PRESETS,
    VAL_SPLIT,
    Phase,
    PipelineError,
    count_records,
    datagen_module,
    earlier_phases,
    parse_overrides,
    phase_config,
    repo_file,
)
from mypt_jax.curriculum.summary import format_summary, write_summary
from mypt_jax.training.checkpoint.run_meta import finished_run

STEPS = ("generate", "mix", "prepare", "train", "test")
HANDOFFS = ("memory", "disk")  # how a phase gets the previous phase's weights (run_phases)


def _newer_or_same(path: Path, inputs: Sequence[Path]) -> bool:
    return all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def _log(msg: str) -> None:
    if is_main():
        print(msg, flush=True)


# ----------------------------------------------------------------------------- Step 1


def generate_step(root: Path, key: str) -> dict[str, Any]:
    """Writes a generated dataset unless the file already holds exactly what the generator yields."""
    from datagen import records as rec

    spec = GENERATED[key]
    path = root / spec.path
    records = datagen_module(spec.generator).generate(**spec.kwargs)
    text = rec.to_jsonl(records)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return {"status": SKIPPED, "path": str(path), "records": len(records)}
    rec.write_text_atomic(path, text)
    return {"status": "done", "path": str(path), "records": len(records)}


def mix_step(root: Path, phase: Phase, replay_share: float | None,
             replays: Sequence[tuple[str, float]] = ()) -> dict[str, Any]:
    """The seed doc's `mix_sft_jsonl.py --inputs ... --shuffle` (and the preset's replayed train
    splits, `curriculum.replay`), skipped when already done."""
    from datagen import mix

    datasets = replay.mixed_datasets(phase, replays)
    inputs = [root / GENERATED[k].path for k in datasets] + [
        replay.train_split_path(root, name) for name, _ in replays]
    ratios = [1.0] * len(datasets) + [ratio for _, ratio in replays]
    if replay_share is not None:  # the share sizes every replay input; the sidecar has no ratio
        ratios = [1.0] + [None] * (len(inputs) - 1)
    output = root / phase.mix_output
    meta_file = mix.meta_path(output)
    if output.is_file() and meta_file.is_file() and _newer_or_same(output, inputs):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        same = (
            [(s["path"], s["ratio"]) for s in meta.get("sources", [])]
            == [(str(p), r) for p, r in zip(inputs, ratios, strict=True)]
            and meta.get("replay_share") == replay_share and meta.get("seed") == MIX_SEED
            and meta.get("shuffled") is True
            and meta.get("total_episodes") == count_records(output)
        )
        if same:
            return {"status": SKIPPED, "path": str(output), "records": meta["total_episodes"]}
    specs = [str(p) if r in (1.0, None) else f"{p}:{r:g}" for p, r in zip(inputs, ratios, strict=True)]
    argv = ["--inputs", *specs, "--output", str(output), "--shuffle", "--seed", str(MIX_SEED)]
    if replay_share is not None:
        argv += ["--replay_share", str(replay_share)]
    mixed = mix.run(mix.build_parser().parse_args(argv))
    return {"status": "done", "path": str(output), "records": len(mixed)}


# ----------------------------------------------------------------------------- Step 2


def prepare_input(root: Path, phase: Phase) -> Path:
    return root / (phase.mix_output or GENERATED[phase.datasets[0]].path)


def prepare_step(root: Path, phase: Phase) -> dict[str, Any]:
    from mypt_jax.data import episodes
    from mypt_jax.data.prepare import prepare

    source, out = prepare_input(root, phase), root / phase.prepared
    if not source.is_file():
        raise PipelineError(f"{source}: missing; run the generate/mix steps first")
    n = count_records(source)
    meta_file = out / episodes.METADATA_FILE
    if meta_file.is_file() and _newer_or_same(meta_file, [source]):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if (meta.get("source_file") == str(source) and meta.get("num_conversations") == n
                and meta.get("val_split") == VAL_SPLIT):
            return {"status": SKIPPED, "dir": str(out)}
    prepare(source, out, val_split=VAL_SPLIT, progress=False)
    return {"status": "done", "dir": str(out)}


# ----------------------------------------------------------------------------- the driver


def _timed(fn: Callable[[], dict]) -> dict:
    t0 = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def default_eval_sets(root: Path, phase: Phase, names: Sequence[str]) -> str:
    """Every earlier phase's val split, to watch forgetting: beta watches alpha, gamma alpha and
    beta, 3a-2 all three. A phase counts when it runs now or its data is prepared already."""
    from mypt_jax.training.setup import eval_sets

    return eval_sets.format_spec({
        name: str(root / PHASES[name].prepared) for name in earlier_phases(phase)
        if name in names or (root / PHASES[name].prepared).is_dir()})


def replay_step(root: Path, name: str) -> dict[str, Any]:
    """An earlier phase's train split for a later mix (`curriculum.replay`), rewritten only
    when its records changed."""
    path, records, changed = replay.write_train_split(root, name)
    return {"status": "done" if changed else SKIPPED, "path": str(path), "records": records}


class _Steps:
    """One phase's steps, each logged and its status kept for the summary."""

    def __init__(self, phase: Phase, steps: Sequence[str]):
        self.phase, self.steps = phase, steps
        self.status: dict[str, dict] = {}
        self.seconds = 0.0

    def run(self, name: str, fn: Callable[[], dict]) -> dict | None:
        if name not in self.steps:
            return None
        _log(f"[{self.phase.name}] {name} ...")
        result = _timed(fn)
        self.status[name] = {k: v for k, v in result.items() if k not in ("results", "handoff")}
        _log(f"[{self.phase.name}] {name}: {result['status']} ({result['seconds']}s)")
        return result

    def note(self, key: str, result: dict, line: str) -> None:
        self.status[key] = result
        _log(f"[{self.phase.name}] {line}")


def data_steps(root: Path, done: _Steps, replay_share: float | None,
               replays: Sequence[tuple[str, float]]) -> None:
    """Steps 1 and 2 of a phase: its datasets (and the train splits it replays), its mix,
    its prepared episodes."""
    t0, phase, steps = time.perf_counter(), done.phase, done.steps
    for key in replay.mixed_datasets(phase, replays):
        if "generate" in steps:
            result = _timed(lambda key=key: generate_step(root, key))
            done.note(f"generate {key}", result, f"generate {GENERATED[key].path}: "
                      f"{result['status']} ({result['records']} records)")
    for name, ratio in replays if "mix" in steps else ():
        result = _timed(lambda name=name: replay_step(root, name))
        done.note(f"replay {name}", result, f"replay {name}'s train split x{ratio:g}: "
                  f"{result['path']}: {result['status']} ({result['records']} records)")
    if phase.mix_output:
        done.run("mix", lambda: mix_step(root, phase, replay_share, replays))
    done.run("prepare", lambda: prepare_step(root, phase))
    done.seconds += time.perf_counter() - t0


def train_and_test(root: Path, done: _Steps, config, replays: Sequence[tuple[str, float]], *,
                init=None, hand_off: bool = False) -> PhaseRun:
    """Steps 3 and 4 of a phase; `init`/`hand_off` as `train_step` takes them."""
    t0, phase = time.perf_counter(), done.phase
    trained = done.run("train", lambda: train_step(config, init, hand_off)) or {}
    handed = trained.get("handoff")
    prompts_file = repo_file(root, phase.test_prompts)
    tested = done.run("test", lambda: test_step(config, prompts_file,
                                                None if handed is None else handed.init))
    if tested:
        _log(f"[{phase.name}] test prompts ({prompts_file}):")
        for r in tested["results"]:
            verdict = "ok" if r["exact"] else ("ok (normalized)" if r["normalized"] else "WRONG")
            expected = "" if r["expected"] is None else f"   expected {r['expected']!r}: {verdict}"
            _log(f"  {question(r['prompt'])!r} -> {r['completion']!r}{expected}")
    done.seconds += time.perf_counter() - t0
    return PhaseRun(root, phase, config, prompts_file, replays, done.status,
                    round(done.seconds, 2), handed, tested)


def run_phases(root: Path, names: Sequence[str], configs: dict, steps: Sequence[str],
               replay_share: float | None, replays: dict, handoff: str) -> list[dict[str, Any]]:
    """The phases in order, as one job. Every phase's data first, then each phase trains
    and tests. With `handoff="memory"` a phase starts from the previous one's weights on the
    devices while the previous one's final writes go on, and the next phase's programs
    compile while it trains (`next_phase.py`); a phase's summary is made once its writes
    are done. "disk": each phase's writes are waited for, and the next reads its weights
    back from them (the process-per-phase path)."""
    from mypt_jax.training import next_phase

    phases = {name: _Steps(PHASES[name], steps) for name in names}
    for name in names:
        data_steps(root, phases[name], replay_share, replays[name])
    summaries: list[dict[str, Any]] = []
    done: PhaseRun | None = None
    running: list[PhaseRun] = []  # their final writes may be in flight
    ahead: dict[str, next_phase.NextPhase] = {}  # a phase's programs compiling ahead of it
    memory = handoff == "memory" and "train" in steps
    try:
        for i, name in enumerate(names):
            if name in ahead:  # the compile in flight ends; the rest compile at its start
                ahead.pop(name).stop()
            later = names[i + 1] if i + 1 < len(names) else None
            if memory and later and next_phase.wanted(configs[later]):
                ahead[later] = next_phase.NextPhase(configs[later])
            init = done.handoff.init if done is not None and done.handoff is not None else None
            current = train_and_test(root, phases[name], configs[name], replays[name],
                                     init=init, hand_off=memory and i < len(names) - 1)
            running.append(current)
            if done is not None:  # its writes went on while this phase trained
                summaries.append(done.finish())
                running.remove(done)
            done = current
        summaries.append(done.finish())
        running.remove(done)
    finally:  # a failure or a stop: the finished phases' writes still land
        for compiling in ahead.values():
            compiling.stop()
        for phase in running:
            with contextlib.suppress(Exception):
                phase.wait()
    return summaries


def run(
    phase: str,
    *,
    root: str | Path = ".",
    preset: str = "real",
    init_from: str | None = None,
    replay_share: float | None = None,
    steps: Sequence[str] = STEPS,
    overrides: dict[str, Any] | None = None,
    handoff: str = "memory",
) -> list[dict[str, Any]]:
    """Runs one phase (or `all`, in order, as one job: `run_phases`) and returns the
    per-phase summaries."""
    if preset not in PRESETS:
        raise PipelineError(f"--preset: expected one of {PRESETS}, got {preset!r}")
    names = list(PHASES) if phase == "all" else [phase]
    if names[0] not in PHASES:
        raise PipelineError(f"--phase: expected one of {[*PHASES, 'all']}, got {phase!r}")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise PipelineError(f"--steps: unknown {unknown}; expected a subset of {STEPS}")
    if handoff not in HANDOFFS:
        raise PipelineError(f"--handoff: expected one of {HANDOFFS}, got {handoff!r}")
    if replay_share is not None and not 0.0 < replay_share < 1.0:
        raise PipelineError(f"--replay_share: expected 0 < F < 1, got {replay_share}")
    # Absolute: orbax refuses relative checkpoint paths, and the summary should say where.
    root = Path(root).absolute()
    overrides = dict(overrides or {})

    import jax

    if jax.process_count() > 1 and set(steps) & {"generate", "mix", "prepare", "test"}:
        raise PipelineError(
            "the pipeline's data and test steps run on one host; with several processes pass "
            "--steps train (prepare the data first, on every host's disk or a shared one)")

    configs, replays = {}, {name: replay.plan(preset, PHASES[name]) for name in names}
    for name in names if "mix" in steps else ():
        for earlier, _ in replays[name]:
            prepared = replay.metadata_path(root, earlier)
            if earlier not in names and not prepared.is_file():
                raise PipelineError(f"{name} replays {earlier}'s train split, but {prepared} is "
                                    f"missing; run `--phase {earlier}` first (or `--phase all`)")
    for i, name in enumerate(names):
        p = PHASES[name]
        c = phase_config(root, p, preset, init_from if i == 0 else None, overrides)
        if not c.init_from and p.previous is not None:
            prev = configs.get(p.previous) or phase_config(root, PHASES[p.previous], preset, None,
                                                          overrides)
            if i == 0 and "train" in steps and not finished_run(prev.workdir, prev.max_iters):
                # Not the newest checkpoint of an unfinished run: the phase's final weights.
                raise PipelineError(
                    f"init_from: the {p.previous} run {prev.workdir} has not finished "
                    f"{prev.max_iters} steps; run `--phase {p.previous}` first (or `--phase all`)")
            c.init_from = prev.workdir
        if "eval_sets" not in overrides:
            c.eval_sets = default_eval_sets(root, p, names)
        configs[name] = c
    first = configs[names[0]]
    local = first.init_from and "://" not in first.init_from
    if "train" in steps and local and not Path(first.init_from).exists():
        hint = ""
        if preset == "real" and PHASES[names[0]].previous is None:
            hint = (f"; import the base model there with `python -m mypt_jax.convert import "
                    f"UPSTREAM_DIR {first.init_from}`, pass --init_from, or use --preset cpu")
        raise PipelineError(f"init_from: {first.init_from} does not exist{hint}")
    if preset == "cpu" and names[0] == "3a1_alpha" and not first.init_from:
        _log("[3a1_alpha] --preset cpu: training a tiny model from scratch (the real recipe "
             f"starts from {BASE_CHECKPOINT}; see --init_from)")

    return run_phases(root, names, configs, steps, replay_share, replays, handoff)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mypt_jax.pipeline",
                                description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--phase", required=True, choices=[*PHASES, "all"])
    p.add_argument("--preset", default="real", choices=PRESETS,
                   help="real: configs/phase3a*.py (750M); cpu: configs/pipeline_cpu.py (tiny)")
    p.add_argument("--root", default=".", help="where data/, runs/, logs/ live (default: CWD)")
    p.add_argument("--init_from", default=None,
                   help="initialise the first phase run from this (default: the previous phase's "
                        f"run; alpha: {BASE_CHECKPOINT}, or scratch with --preset cpu)")
    p.add_argument("--replay_share", type=float, default=None,
                   help="replayed inputs' share of each mix (default: whole files, as the seed doc)")
    p.add_argument("--steps", default=",".join(STEPS), help="comma list, subset of " + ",".join(STEPS))
    p.add_argument("--handoff", default="memory", choices=HANDOFFS,
                   help="between phases: memory = the previous phase's weights as they are on "
                   "the devices, its final writes in the background (one job); disk = wait "
                   "for them and read them back, as a process per phase does")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host; "
                   "with --steps train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a training config field in every phase (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datagen.records import DatagenError
    from mypt_jax.parallel import distributed, hostmem
    from mypt_jax.training import exit_codes

    hostmem.keep_freed_memory()
    try:
        distributed.maybe_initialize(force=args.distributed)
        summaries = run(args.phase, root=args.root, preset=args.preset, init_from=args.init_from,
                        replay_share=args.replay_share,
                        steps=[s for s in args.steps.split(",") if s],
                        overrides=parse_overrides(args.overrides), handoff=args.handoff)
    except (PipelineError, distributed.DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        known = exit_codes.user_error(e)  # the run's own: preempted (75), checkpoint (4), ...
        if known is None and isinstance(e, ValueError | DatagenError):  # PrepareError, ...
            known = 2, f"error: {e}"
        if known is None:
            raise
        print(known[1], file=sys.stderr)
        return known[0]
    if not is_main():
        return 0
    print(format_summary(summaries), flush=True)
    if len(summaries) > 1:
        path = Path(args.root).absolute() / "logs" / f"pipeline_{args.phase}_{args.preset}.summary.json"
        write_summary(path, summaries)
        print(f"all phases: {path}")
        from mypt_jax.training.observe import plot

        runs = [plot.curves(plot.read_log(s["train"]["log"]), s["phase"])
                for s in summaries if "loss_plot" in s.get("train", {})]
        if runs:  # the phases one after another on one step axis
            png = path.with_name(path.name.removesuffix(".summary.json") + ".loss.png")
            print(f"all phases' curves: {plot.save(plot.figure(runs, chain=True), png)}")
    return 0
