"""A phase's summary: every number read back from the files its steps wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mypt_jax.curriculum import replay
from mypt_jax.curriculum.phases import GENERATED, Phase, count_records, test_results_path
from mypt_jax.data.paths import write_json_atomic
from mypt_jax.training.checkpoint.run_meta import CHECKPOINTS_DIR, finished_run
from mypt_jax.training.checkpoint.run_state import RunState


def phase_summary(
    root: Path, phase: Phase, config, prompts_file: str, step_status: dict[str, dict],
    replays: Sequence[tuple[str, float]] = (),
) -> dict[str, Any]:
    """Everything reported for a phase, read back from what the steps wrote."""
    out: dict[str, Any] = {
        "phase": phase.name, "steps": step_status, "data": _data_summary(root, phase, replays)}
    run = finished_run(config.workdir, config.max_iters)
    if run is not None:
        out["train"] = _train_summary(config, phase, run)
    results = _read_test_results(config.workdir)
    if results:
        out["test"] = _test_summary(prompts_file, results)
    if run is not None:
        red = _red_lines(config, run, results, out["train"]["eval_sets"])
        out["red_lines"] = red
        out["verdict"] = "RED LINE" if red else "ok"
    return out


def _record_count(path: Path) -> int | None:
    """A JSONL file's records, None where the file is not there."""
    return count_records(path) if path.is_file() else None


def _data_summary(root: Path, phase: Phase, replays: Sequence[tuple[str, float]]) -> dict:
    """The records the data steps wrote: generated, replayed, mixed and prepared."""
    generated = {}
    for key in replay.mixed_datasets(phase, replays):
        path = root / GENERATED[key].path
        generated[str(path)] = _record_count(path)
    replayed = {}
    for name, _ in replays:
        path = replay.train_split_path(root, name)
        replayed[str(path)] = _record_count(path)
    return {"generated": generated, "replayed": replayed,
            "mixed": _mixed_summary(root, phase), "prepared": _prepared_summary(root, phase)}


def _mixed_summary(root: Path, phase: Phase) -> dict[str, Any] | None:
    """The mixed file's records and what each input gave it; None for a phase without a mix."""
    from datagen import mix

    if not phase.mix_output:
        return None
    path = root / phase.mix_output
    mixed = {"path": str(path), "records": _record_count(path)}
    meta_file = mix.meta_path(path)
    if meta_file.is_file():  # what each input gave the mix, from its sidecar
        mixed["sources"] = {
            s["path"]: s["sampled"]
            for s in json.loads(meta_file.read_text(encoding="utf-8"))["sources"]}
    return mixed


def _prepared_summary(root: Path, phase: Phase) -> dict[str, Any] | None:
    """The prepared dataset's conversations, episodes and tokens; None before it exists."""
    from mypt_jax.data.dataset import read_metadata

    prepared = root / phase.prepared
    meta = read_metadata(prepared) if prepared.is_dir() else {}
    if not meta:
        return None
    return {
        "dir": str(prepared), "source": meta.get("source_file"),
        "records": meta["num_conversations"],
        "train_episodes": meta["num_train_episodes"], "val_episodes": meta["num_val_episodes"],
        "train_tokens": meta["num_train_tokens"], "val_tokens": meta["num_val_tokens"],
    }


def _train_summary(config, phase: Phase, run: RunState) -> dict[str, Any]:
    """The finished run's losses, checkpoint, compiles, speed and loss curve."""
    import jax

    from mypt_jax.interop import model_io

    log_path = Path(config.log_file)
    ckpt = Path(config.workdir) / CHECKPOINTS_DIR / str(run.step)
    metrics = run.last_eval
    trained = run.summary or {}
    train = {
        "workdir": config.workdir, "init_from": config.init_from or None,
        "steps": run.step, "first_val_loss": run.first_val_loss,
        "final_val_loss": metrics.get("val_loss"), "checkpoint": str(ckpt),
        "model_dir": str(Path(config.workdir) / model_io.RUN_MODEL_DIR), "log": str(log_path),
        "training_eval_scores": metrics.get("gen_scores", {}),
        "eval_sets": _eval_sets_summary(run, metrics),
        # The programs of the run (a rerun of a finished phase keeps the first run's).
        "compiles": trained.get("compiles", []),
        "compile_s": trained.get("compile_s"), "compile_wall_s": trained.get("compile_wall_s"),
        "wall_time_s": trained.get("wall_time_s"),
        **throughput(config, trained),
    }
    if log_path.is_file() and jax.process_index() == 0:
        train.update(_loss_curve(log_path, phase.name))
    return train


def _eval_sets_summary(run: RunState, metrics: dict) -> dict[str, dict]:
    """Each eval set's val loss at the run's first and at its final evaluation."""
    from mypt_jax.training.observe import plot

    first_by_set = run.first_sets
    return {
        k.removeprefix(plot.SET_PREFIX): {
            "first": first_by_set.get(k.removeprefix(plot.SET_PREFIX)), "final": v}
        for k, v in metrics.items() if k.startswith(plot.SET_PREFIX)}


def _loss_curve(log_path: Path, label: str) -> dict[str, Any]:
    """The first and last logged train loss, and the loss plot written from the log."""
    from mypt_jax.training.observe import plot

    losses = plot.curves(plot.read_log(log_path), label).train_loss
    return {
        "train_loss": {  # [step, loss] of the first and last logged step
            "first": list(losses[0]) if losses else None,
            "last": list(losses[-1]) if losses else None},
        "loss_plot": str(plot.write_run_figure(log_path, label=label)),
    }


def _read_test_results(workdir: str) -> list[dict]:
    """The test step's per-prompt results, [] before it has run."""
    tested = test_results_path(workdir)
    return json.loads(tested.read_text(encoding="utf-8"))["results"] if tested.is_file() else []


def _test_summary(prompts_file: str, results: list[dict]) -> dict[str, Any]:
    """The test prompts' completions and how many matched their expected answers."""
    return {
        "prompts_file": prompts_file,
        "results": [{k: r[k] for k in ("name", "completion", "expected", "exact", "normalized")}
                    for r in results],
        "exact": sum(bool(r["exact"]) for r in results),
        "normalized": sum(bool(r["normalized"]) for r in results),
        "scored": sum(r["expected"] is not None for r in results),
    }


def _red_lines(config, run: RunState, results: list[dict], sets: dict[str, dict]) -> list:
    """The health checks' failures, plus the forgetting of earlier phases' eval sets."""
    from mypt_jax.data.tokenizer import Tokenizer
    from mypt_jax.training.evals import health

    tags = list(Tokenizer.from_state(run.tokenizer).id_by_string) if run.tokenizer else []
    red = health.check(list(run.val_history), results, step=run.step, tag_strings=tags,
                       simple_prompts_after=config.simple_prompts_after)
    forgot = health.forgetting({n: v["first"] for n, v in sets.items() if v["first"]},
                                  {n: v["final"] for n, v in sets.items()},
                                  config.forgetting_factor)
    red += [forgot] if forgot else []
    return red


def throughput(config, trained: dict) -> dict[str, Any]:
    """The run's steady step time and model FLOP/s (its summary's medians), and its MFU over
    the devices' matmul peak (`preflight.peak`: measured once per process on CPU)."""
    from mypt_jax.preflight import peak
    from mypt_jax.training.setup.config import PRECISIONS

    rate = trained.get("model_flops_per_s")
    out = {"step_time_s": trained.get("step_time_s"), "model_flops_per_s": rate, "mfu": None}
    if rate:
        flops_per_s, source = peak.device_peak(PRECISIONS[config.precision][1])
        out.update(peak_flops_per_s=flops_per_s, peak_source=source, mfu=rate / flops_per_s)
    return out


def write_summary(path: Path, payload: Any) -> Path:
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
        for path, n in d.get("replayed", {}).items():
            lines.append(f"  replayed   {path}: {n} records (an earlier phase's train split)")
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
                         f"val loss {first} -> {final}" + _train_losses(t))
            if t.get("step_time_s"):
                mfu = "" if t["mfu"] is None else (
                    f", MFU {t['mfu']:.0%} of {t['peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
                    f"({t['peak_source']})")
                took = "" if t["wall_time_s"] is None else f"; training took {t['wall_time_s']:.1f}s"
                lines.append(f"  speed      {t['step_time_s'] * 1e3:.0f} ms/step, "
                             f"{t['model_flops_per_s'] / 1e9:.1f} GFLOP/s{mfu}{took}")
            lines.append(f"  checkpoint {t['checkpoint']}  (model: {t['model_dir']})")
            if t.get("compiles"):
                hits = sum(r["cache_hit"] is True for r in t["compiles"])
                lines.append(f"  compiled   {len(t['compiles'])} programs, {hits} from the cache: "
                             f"{t['compile_s']:.1f}s of compiling, {t['compile_wall_s']:.1f}s "
                             "before step 0")
            for name, v in t.get("eval_sets", {}).items():
                first = "?" if v["first"] is None else f"{v['first']:.4f}"
                lines.append(f"  eval set   {name}: val loss {first} -> {v['final']:.4f}")
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
    return "\n".join(lines + forgetting_table(summaries))


def _train_losses(t: dict) -> str:
    losses = t.get("train_loss") or {}
    if not losses.get("first"):
        return ""
    (s0, first), (s1, last) = losses["first"], losses["last"]
    return f"; train loss {first:.4f} (step {s0}) -> {last:.4f} (step {s1})"


def forgetting_table(summaries: Sequence[dict]) -> list[str]:
    """Each phase's val loss at the end of its own run and of every later one (its eval set)."""
    trained = [s for s in summaries if s.get("train")]
    if len(trained) < 2:
        return []
    names = [s["phase"] for s in trained]
    width = max(len(n) for n in names) + 2
    lines = ["", "forgetting: each phase's val loss at the end of each phase "
             "(its own run, then as an eval set)",
             " " * width + "".join(n.rjust(width) for n in names)]
    for row in names:
        cells = []
        for s in trained:
            t = s["train"]
            value = t["final_val_loss"] if s["phase"] == row else (
                t.get("eval_sets", {}).get(row, {}).get("final"))
            cells.append(("-" if value is None else f"{value:.4f}").rjust(width))
        lines.append(row.ljust(width) + "".join(cells))
    return lines


