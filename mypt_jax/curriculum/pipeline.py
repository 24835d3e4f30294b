"""Phase 3a end to end, one command per phase: the seed document's Steps 1-4 with our tools.

    python -m mypt_jax.pipeline --phase 3a1_alpha|3a1_beta|3a1_gamma|3a2|all
        [--preset real|cpu] [--root DIR] [--init_from PATH] [--replay_share F]
        [--steps generate,mix,prepare,train,test] [--set field=value ...]

Per phase: Step 1 generates its datasets (and those it replays) and mixes them, Step 2
prepares the episode files, Step 3 trains (from the previous phase's run, or `--init_from`),
Step 4 answers the phase's test prompts greedily. A step whose outputs are complete is
skipped and says so: a generated file equal to what the generator yields, a mix whose
sidecar names the same inputs and whose line count matches, a prepared dataset whose
metadata names the same input and record count, a run whose checkpoint at max_iters is
marked finished. Everything lives under `--root` (default: the current directory) in the
seed document's layout (`data/sft_format_lock_alpha/...`, `data/sft_ready/phase3a1_alpha`).

Mixes: the seed commands concatenate their inputs whole (100% + 100%) and shuffle, and so
do we by default; `--replay_share 0.15` makes the replayed inputs 15% of the mix instead.

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
import ast
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = ("generate", "mix", "prepare", "train", "test")
PRESETS = ("real", "cpu")
SKIPPED = "skipped (complete)"
MIX_SEED = 42  # the seed commands' default
VAL_SPLIT = 0.1  # the seed commands' --val_split
BASE_CHECKPOINT = "checkpoints/domain_v5_sft_ready"
_PIPELINE_PATHS = ("dataset_dir", "workdir", "log_file", "init_from")  # one per phase, not --set


class PipelineError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- the phase table


@dataclasses.dataclass(frozen=True)
class Generated:
    """A Step 1 dataset: which generator, its arguments, where the seed doc puts it."""

    generator: str  # "format_lock" | "echo" (datagen modules)
    kwargs: dict[str, Any]
    output_dir: str

    @property
    def path(self) -> str:
        return f"{self.output_dir}/{_datagen(self.generator).OUTPUT_NAME}"


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    datasets: tuple[str, ...]  # keys of GENERATED; the first is this phase's, the rest replay
    mix_output: str | None  # None: prepare the first dataset as it is
    prepared: str
    config: str  # module under configs/ for the real preset
    test_prompts: str  # Step 4
    previous: str | None  # the phase whose run initialises this one


GENERATED = {
    "format_lock_alpha": Generated("format_lock", {"mode": "minimal", "math": "exclude"},
                                   "data/sft_format_lock_alpha"),
    "echo_beta": Generated("echo", {"gibberish": "exclude", "max_examples": 2500},
                           "data/sft_echo_beta"),
    "echo_gamma": Generated("echo", {"gibberish": "only"}, "data/sft_echo_gamma"),
    "format_lock_3a2": Generated("format_lock", {"mode": "full", "math": "include"},
                                 "data/sft_format_lock_3a2"),
}
PHASES = {
    p.name: p for p in (
        Phase("3a1_alpha", ("format_lock_alpha",), None, "data/sft_ready/phase3a1_alpha",
              "phase3a1_alpha", "configs/sft_eval/phase3a1_alpha_test_prompts.json", None),
        Phase("3a1_beta", ("echo_beta", "format_lock_alpha"),
              "data/sft_mixed/phase3a1_beta_mixed.jsonl", "data/sft_ready/phase3a1_beta",
              "phase3a1_beta", "configs/sft_eval/phase3a1_beta_test_prompts.json", "3a1_alpha"),
        Phase("3a1_gamma", ("echo_gamma", "echo_beta"),
              "data/sft_mixed/phase3a1_gamma_mixed.jsonl", "data/sft_ready/phase3a1_gamma",
              "phase3a1_gamma", "configs/sft_eval/phase3a1_gamma_test_prompts.json", "3a1_beta"),
        Phase("3a2", ("format_lock_3a2", "echo_beta"),
              "data/sft_mixed/phase3a2_mixed.jsonl", "data/sft_ready/phase3a2",
              "phase3a2", "configs/sft_eval/phase3a2_test_prompts.json", "3a1_gamma"),
    )
}


def _datagen(name: str):
    return importlib.import_module(f"datagen.{name}")


def _configs(module: str):
    if str(REPO) not in sys.path:  # configs/ is a directory of the repository, not installed
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"configs.{module}")


# ----------------------------------------------------------------------------- small helpers


def count_records(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _newer_or_same(path: Path, inputs: Sequence[Path]) -> bool:
    return all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def _is_main() -> bool:
    import jax

    return jax.process_index() == 0


def _log(msg: str) -> None:
    if _is_main():
        print(msg, flush=True)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`field=value` strings -> dict; values are Python literals, else strings."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set {item!r}: expected field=value")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


# ----------------------------------------------------------------------------- Step 1


def generate_step(root: Path, key: str) -> dict[str, Any]:
    """Writes a generated dataset unless the file already holds exactly what the generator yields."""
    from datagen import records as rec

    spec = GENERATED[key]
    path = root / spec.path
    records = _datagen(spec.generator).generate(**spec.kwargs)
    text = rec.to_jsonl(records)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return {"status": SKIPPED, "path": str(path), "records": len(records)}
    rec.write_text_atomic(path, text)
    return {"status": "done", "path": str(path), "records": len(records)}


def mix_step(root: Path, phase: Phase, replay_share: float | None) -> dict[str, Any]:
    """The seed doc's `mix_sft_jsonl.py --inputs ... --shuffle`, skipped when already done."""
    from datagen import mix

    inputs = [root / GENERATED[k].path for k in phase.datasets]
    output = root / phase.mix_output
    meta_file = mix.meta_path(output)
    if output.is_file() and meta_file.is_file() and _newer_or_same(output, inputs):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        same = (
            [s["path"] for s in meta.get("sources", [])] == [str(p) for p in inputs]
            and meta.get("replay_share") == replay_share and meta.get("seed") == MIX_SEED
            and meta.get("shuffled") is True
            and meta.get("total_episodes") == count_records(output)
        )
        if same:
            return {"status": SKIPPED, "path": str(output), "records": meta["total_episodes"]}
    argv = ["--inputs", *map(str, inputs), "--output", str(output), "--shuffle",
            "--seed", str(MIX_SEED)]
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


# ----------------------------------------------------------------------------- Step 3


def _anchor(root: Path, value: str) -> str:
    """A config path: absolute or a URL (gs://...) stays, else under the root."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str(root / value)


def _repo_file(root: Path, value: str) -> str:
    """A file the repository ships (eval prompts): under the root if there, else the repo's."""
    if not value or Path(value).is_absolute() or (root / value).is_file():
        return _anchor(root, value)
    return str(REPO / value)


def phase_config(root: Path, phase: Phase, preset: str, init_from: str | None,
                 overrides: dict[str, Any]):
    """The training ConfigDict of a phase with every path resolved under the root."""
    from ml_collections import config_dict

    if preset == "cpu":
        c = _configs("pipeline_cpu").get_config(phase.name)
    else:
        c = _configs(phase.config).get_config()
    c = config_dict.ConfigDict(c.to_dict())
    c.dataset_dir = str(root / phase.prepared)
    c.workdir = _anchor(root, c.workdir)
    c.log_file = _anchor(root, c.log_file) if c.log_file else str(Path(c.workdir) / "log.jsonl")
    c.eval_prompts_file = _repo_file(root, c.eval_prompts_file)
    if init_from is not None:
        c.init_from = init_from
    elif phase.previous is not None:
        c.init_from = ""  # filled in by the caller from the previous phase's config
    else:
        c.init_from = _anchor(root, c.init_from)
    for key, value in overrides.items():
        if key not in c:
            raise PipelineError(f"--set {key}: unknown config field (see configs/base.py)")
        if key in _PIPELINE_PATHS:
            raise PipelineError(f"--set {key}: set by the pipeline per phase (use --root/--init_from)")
        if isinstance(c[key], float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        c[key] = value
    return c


def finished_run(workdir: str, max_iters: int) -> dict | None:
    """The final checkpoint's record if the run finished at (or past) max_iters, else None."""
    from mypt_jax.training.config import latest_run_meta

    meta = latest_run_meta(workdir)
    if meta and meta.get("finished") and meta.get("step", -1) >= max_iters:
        return meta
    return None


def train_step(config) -> dict[str, Any]:
    from mypt_jax.training import trainer

    if finished_run(config.workdir, config.max_iters):
        return {"status": SKIPPED, "workdir": config.workdir}
    trainer.train(config)
    return {"status": "done", "workdir": config.workdir}


# ----------------------------------------------------------------------------- Step 4


def _question(prompt: str) -> str:
    start, end = prompt.rfind("<myPT_user>"), prompt.rfind("</myPT_user>")
    return prompt[start + len("<myPT_user>"):end] if 0 <= start < end else prompt


def test_results_path(workdir: str) -> Path:
    return Path(workdir) / "test_prompts.json"


def test_step(config, prompts_file: str) -> dict[str, Any]:
    """Greedy answers to the phase's test prompts from the run's final model directory."""
    import mypt_jax
    from mypt_jax import evaluate
    from mypt_jax.interop import model_io

    model_dir = Path(config.workdir) / model_io.RUN_MODEL_DIR
    out = test_results_path(config.workdir)
    if not (model_dir / "config.json").is_file():
        raise PipelineError(f"{model_dir}: no final model; run the train step first")
    if out.is_file() and out.stat().st_mtime >= (model_dir / "config.json").stat().st_mtime:
        saved = json.loads(out.read_text(encoding="utf-8"))
        if saved.get("prompts_file") == prompts_file:
            return {"status": SKIPPED, "results": saved["results"]}
    model = mypt_jax.load(model_dir)
    results = evaluate.evaluate(model, model.tokenizer, evaluate.load_eval_prompts(prompts_file),
                                max_new_tokens=config.eval_max_new_tokens or None)
    evaluate.write_json_atomic(out, {"model_dir": str(model_dir), "prompts_file": prompts_file,
                                     "results": results})
    return {"status": "done", "results": results}


# ----------------------------------------------------------------------------- the summary


def phase_summary(
    root: Path, phase: Phase, config, prompts_file: str, step_status: dict[str, dict]
) -> dict[str, Any]:
    """Everything reported for a phase, read back from what the steps wrote."""
    from mypt_jax.data.loader import read_metadata
    from mypt_jax.interop import model_io
    from mypt_jax.training import health, plot

    data = {"generated": {}, "mixed": None, "prepared": None}
    for key in phase.datasets:
        path = root / GENERATED[key].path
        data["generated"][str(path)] = count_records(path) if path.is_file() else None
    if phase.mix_output:
        path = root / phase.mix_output
        data["mixed"] = {"path": str(path), "records": count_records(path) if path.is_file() else None}
    prepared = root / phase.prepared
    meta = read_metadata(prepared) if prepared.is_dir() else {}
    if meta:
        data["prepared"] = {
            "dir": str(prepared), "source": meta.get("source_file"),
            "records": meta["num_conversations"],
            "train_episodes": meta["num_train_episodes"], "val_episodes": meta["num_val_episodes"],
            "train_tokens": meta["num_train_tokens"], "val_tokens": meta["num_val_tokens"],
        }

    out: dict[str, Any] = {"phase": phase.name, "steps": step_status, "data": data}
    run = finished_run(config.workdir, config.max_iters)
    log_path = Path(config.log_file)
    if run is not None:
        ckpt = Path(config.workdir) / "checkpoints" / str(run["step"])
        metrics = run.get("metrics") or {}
        out["train"] = {
            "workdir": config.workdir, "init_from": config.init_from or None,
            "steps": run["step"], "first_val_loss": run.get("first_val_loss"),
            "final_val_loss": metrics.get("val_loss"), "checkpoint": str(ckpt),
            "model_dir": str(Path(config.workdir) / model_io.RUN_MODEL_DIR), "log": str(log_path),
            "training_eval_scores": metrics.get("gen_scores", {}),
        }
        if log_path.is_file() and _is_main():
            out["train"]["loss_plot"] = str(plot.write_run_figure(log_path, label=phase.name))
    tested = test_results_path(config.workdir)
    results = json.loads(tested.read_text(encoding="utf-8"))["results"] if tested.is_file() else []
    if results:
        out["test"] = {
            "prompts_file": prompts_file,
            "results": [{k: r[k] for k in ("name", "completion", "expected", "exact", "normalized")}
                        for r in results],
            "exact": sum(bool(r["exact"]) for r in results),
            "normalized": sum(bool(r["normalized"]) for r in results),
            "scored": sum(r["expected"] is not None for r in results),
        }
    if run is not None:
        from mypt_jax.data.tokenizer import Tokenizer

        tags = list(Tokenizer.from_state(run["tokenizer"]).id_by_string) if run.get("tokenizer") else []
        red = health.check([tuple(x) for x in run.get("val_history", [])], results,
                           step=run["step"], tag_strings=tags,
                           simple_prompts_after=config.simple_prompts_after)
        out["red_lines"] = red
        out["verdict"] = "RED LINE" if red else "ok"
    return out


def write_summary(path: Path, payload: Any) -> Path:
    from mypt_jax.evaluate import write_json_atomic

    write_json_atomic(path, payload)
    return path


def format_summary(summaries: Sequence[dict]) -> str:
    lines = ["", "=" * 72, "Phase 3a pipeline summary", "=" * 72]
    for s in summaries:
        lines.append(f"[{s['phase']}]  " + "  ".join(
            f"{k}: {v['status']}" for k, v in s["steps"].items()))
        d = s["data"]
        for path, n in d["generated"].items():
            lines.append(f"  generated  {path}: {n} records")
        if d["mixed"]:
            lines.append(f"  mixed      {d['mixed']['path']}: {d['mixed']['records']} records")
        if d["prepared"]:
            p = d["prepared"]
            lines.append(f"  prepared   {p['dir']}: {p['train_episodes']} train / {p['val_episodes']} "
                         f"val episodes, {p['train_tokens']} / {p['val_tokens']} tokens")
        t = s.get("train")
        if t:
            first = "?" if t["first_val_loss"] is None else f"{t['first_val_loss']:.4f}"
            final = "?" if t["final_val_loss"] is None else f"{t['final_val_loss']:.4f}"
            lines.append(f"  trained    {t['steps']} steps from {t['init_from'] or 'scratch'}: "
                         f"val loss {first} -> {final}")
            lines.append(f"  checkpoint {t['checkpoint']}  (model: {t['model_dir']})")
            if "loss_plot" in t:
                lines.append(f"  loss curve {t['loss_plot']}")
        test = s.get("test")
        if test:
            lines.append(f"  test       exact {test['exact']}/{test['scored']}, "
                         f"normalized {test['normalized']}/{test['scored']}")
            for r in test["results"]:
                mark = "ok" if r["exact"] else ("~ok" if r["normalized"] else "--")
                lines.append(f"    [{mark:>3}] {r['name']}: {r['completion']!r}"
                             + (f" (expected {r['expected']!r})" if r["expected"] is not None else ""))
        if "verdict" in s:
            lines.append(f"  red lines  {s['verdict']}"
                         + "".join(f"\n    - {f}" for f in s["red_lines"]))
        if "summary_file" in s:
            lines.append(f"  summary    {s['summary_file']}")
        lines.append(f"  wall time  {s['wall_time_s']:.1f}s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the driver


def _timed(fn: Callable[[], dict]) -> dict:
    t0 = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def run_phase(root: Path, phase: Phase, config, steps: Sequence[str],
              replay_share: float | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    status: dict[str, dict] = {}

    def step(name: str, fn: Callable[[], dict]) -> dict | None:
        if name not in steps:
            return None
        _log(f"[{phase.name}] {name} ...")
        result = _timed(fn)
        status[name] = {k: v for k, v in result.items() if k != "results"}
        _log(f"[{phase.name}] {name}: {result['status']} ({result['seconds']}s)")
        return result

    for key in phase.datasets:
        if "generate" in steps:
            result = _timed(lambda key=key: generate_step(root, key))
            status[f"generate {key}"] = result
            _log(f"[{phase.name}] generate {GENERATED[key].path}: {result['status']} "
                 f"({result['records']} records)")
    if phase.mix_output:
        step("mix", lambda: mix_step(root, phase, replay_share))
    step("prepare", lambda: prepare_step(root, phase))
    step("train", lambda: train_step(config))
    prompts_file = _repo_file(root, phase.test_prompts)
    tested = step("test", lambda: test_step(config, prompts_file))
    if tested:
        _log(f"[{phase.name}] test prompts ({prompts_file}):")
        for r in tested["results"]:
            verdict = "ok" if r["exact"] else ("ok (normalized)" if r["normalized"] else "WRONG")
            expected = "" if r["expected"] is None else f"   expected {r['expected']!r}: {verdict}"
            _log(f"  {_question(r['prompt'])!r} -> {r['completion']!r}{expected}")
    summary = phase_summary(root, phase, config, prompts_file, status)
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    if "train" in summary and _is_main():
        log_path = Path(config.log_file)
        target = log_path.with_name(log_path.name.removesuffix(".jsonl") + ".summary.json")
        summary["summary_file"] = str(write_summary(target, summary))
    return summary


def run(
    phase: str,
    *,
    root: str | Path = ".",
    preset: str = "real",
    init_from: str | None = None,
    replay_share: float | None = None,
    steps: Sequence[str] = STEPS,
    overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Runs one phase (or `all`, in order) and returns the per-phase summaries."""
    if preset not in PRESETS:
        raise PipelineError(f"--preset: expected one of {PRESETS}, got {preset!r}")
    names = list(PHASES) if phase == "all" else [phase]
    if names[0] not in PHASES:
        raise PipelineError(f"--phase: expected one of {[*PHASES, 'all']}, got {phase!r}")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise PipelineError(f"--steps: unknown {unknown}; expected a subset of {STEPS}")
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

    configs = {}
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

    summaries = []
    for name in names:
        summaries.append(run_phase(root, PHASES[name], configs[name], steps, replay_share))
    return summaries


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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a training config field in every phase (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datagen.records import DatagenError
    from mypt_jax.parallel import distributed, hostmem

    hostmem.keep_freed_memory()
    try:
        distributed.maybe_initialize()
        summaries = run(args.phase, root=args.root, preset=args.preset, init_from=args.init_from,
                        replay_share=args.replay_share,
                        steps=[s for s in args.steps.split(",") if s],
                        overrides=parse_overrides(args.overrides))
    except (PipelineError, distributed.DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, DatagenError) as e:  # ConfigError, PrepareError, EvalPromptsError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    if not _is_main():
        return 0
    print(format_summary(summaries), flush=True)
    if len(summaries) > 1:
        path = Path(args.root).absolute() / "logs" / f"pipeline_{args.phase}_{args.preset}.summary.json"
        write_summary(path, summaries)
        print(f"all phases: {path}")
        from mypt_jax.training import plot

        runs = [plot.curves(plot.read_log(s["train"]["log"]), s["phase"])
                for s in summaries if "loss_plot" in s.get("train", {})]
        if runs:  # the phases one after another on one step axis
            png = path.with_name(path.name.removesuffix(".summary.json") + ".loss.png")
            print(f"all phases' curves: {plot.save(plot.figure(runs, chain=True), png)}")
    return 0
