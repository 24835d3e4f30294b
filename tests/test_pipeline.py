"""The Phase 3a pipeline: its phase table, skip rules, and `--phase all` on CPU.

The end-to-end test checks that the summary is true by recounting everything from disk
independently (JSONL lines, episode files, the checkpoint, the model directory, the log).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from mypt_jax.curriculum import pipeline
from mypt_jax.data import episodes

REPO = Path(__file__).resolve().parents[1]
# Tiny training for the end-to-end test; data is the real generators' output.
TINY = {"max_iters": 2, "eval_interval": 2, "eval_iters": 1, "n_embd": 32, "batch_size": 8,
        "log_interval": 1, "warmup_iters": 1}


def _lines(path: str | Path) -> int:
    return sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


# ----------------------------------------------------------------------------- the table


def test_phase_table_matches_the_seed_order_and_the_configs():
    assert list(pipeline.PHASES) == ["3a1_alpha", "3a1_beta", "3a1_gamma", "3a2"]
    previous = None
    for name, phase in pipeline.PHASES.items():
        assert phase.previous == previous
        previous = name
        assert all(k in pipeline.GENERATED for k in phase.datasets)
        assert (REPO / phase.test_prompts).is_file()
        real = pipeline.phase_config(Path("."), phase, "real", None, {})
        assert real.dataset_dir == phase.prepared  # the configs' own paths agree with the table
    alpha = pipeline.PHASES["3a1_alpha"]
    assert pipeline.GENERATED[alpha.datasets[0]].path == (
        "data/sft_format_lock_alpha/mypt_format_lock_v1.jsonl")
    assert pipeline.PHASES["3a1_gamma"].datasets == ("echo_gamma", "echo_beta")


def test_cpu_phases_share_one_architecture():
    cfgs = [pipeline.phase_config(Path("r"), p, "cpu", None, {}) for p in pipeline.PHASES.values()]
    fields = ("n_layer", "n_embd", "n_head", "block_size", "vocab_size", "pos_encoding")
    assert len({tuple(c[f] for f in fields) for c in cfgs}) == 1
    assert [c.workdir for c in cfgs] == [f"r/runs/cpu/phase{n}" for n in pipeline.PHASES]
    assert all(c.dataset_dir.startswith("r/data/sft_ready/") for c in cfgs)


def test_overrides_and_errors(tmp_path):
    assert pipeline.parse_overrides(["max_iters=3", "precision=fp32", "dropout=0.1"]) == {
        "max_iters": 3, "precision": "fp32", "dropout": 0.1}
    with pytest.raises(pipeline.PipelineError, match="expected field=value"):
        pipeline.parse_overrides(["max_iters"])
    phase = pipeline.PHASES["3a1_alpha"]
    c = pipeline.phase_config(tmp_path, phase, "cpu", None, {"learning_rate": 1})
    assert isinstance(c.learning_rate, float) and c.learning_rate == 1.0
    with pytest.raises(pipeline.PipelineError, match="--set nope"):
        pipeline.phase_config(tmp_path, phase, "cpu", None, {"nope": 1})
    with pytest.raises(pipeline.PipelineError, match="--set workdir: set by the pipeline"):
        pipeline.phase_config(tmp_path, phase, "cpu", None, {"workdir": "x"})
    # Beta alone needs alpha's run; the error says how to get it.
    with pytest.raises(pipeline.PipelineError, match="run `--phase 3a1_alpha` first"):
        pipeline.run("3a1_beta", root=tmp_path, preset="cpu", steps=["train"])
    with pytest.raises(pipeline.PipelineError, match="mypt_jax.convert import"):
        pipeline.run("3a1_alpha", root=tmp_path, preset="real", steps=["train"])
    assert pipeline.main(["--phase", "3a1_alpha", "--root", str(tmp_path), "--steps", "bogus"]) == 2


# ----------------------------------------------------------------------------- skip rules


def test_data_steps_skip_when_complete_and_redo_when_not(tmp_path):
    beta = pipeline.PHASES["3a1_beta"]
    for key in beta.datasets:
        assert pipeline.generate_step(tmp_path, key)["status"] == "done"
        assert pipeline.generate_step(tmp_path, key)["status"] == pipeline.SKIPPED
    alpha_file = tmp_path / pipeline.GENERATED["format_lock_alpha"].path
    alpha_file.write_text(alpha_file.read_text()[:-1])  # damaged: last newline gone
    assert pipeline.generate_step(tmp_path, "format_lock_alpha")["status"] == "done"

    first = pipeline.mix_step(tmp_path, beta, None)
    n_inputs = sum(_lines(tmp_path / pipeline.GENERATED[k].path) for k in beta.datasets)
    assert first["status"] == "done" and first["records"] == n_inputs == _lines(first["path"])
    assert pipeline.mix_step(tmp_path, beta, None)["status"] == pipeline.SKIPPED
    # Another replay share is another mix, redone: beta whole, alpha replay 15% of the output.
    shared = pipeline.mix_step(tmp_path, beta, 0.15)
    n_beta = _lines(tmp_path / pipeline.GENERATED["echo_beta"].path)
    assert shared["status"] == "done" and shared["records"] == n_beta + round(n_beta * 0.15 / 0.85)

    assert pipeline.prepare_step(tmp_path, beta)["status"] == "done"
    assert pipeline.prepare_step(tmp_path, beta)["status"] == pipeline.SKIPPED
    mixed = tmp_path / beta.mix_output
    mixed.write_text(mixed.read_text() + mixed.read_text().splitlines()[0] + "\n")
    assert pipeline.prepare_step(tmp_path, beta)["status"] == "done"
    meta = json.loads((tmp_path / beta.prepared / episodes.METADATA_FILE).read_text())
    assert meta["num_conversations"] == shared["records"] + 1


def test_cpu_preset_replays_earlier_train_splits_not_their_val(tmp_path, monkeypatch):
    from mypt_jax.curriculum import replay
    from mypt_jax.data.prepare import prepare

    alpha, beta = pipeline.PHASES["3a1_alpha"], pipeline.PHASES["3a1_beta"]
    with pytest.raises(pipeline.PipelineError, match="dataset_metadata.json is missing; prepare"):
        pipeline.replay_step(tmp_path, "3a1_alpha")
    with pytest.raises(pipeline.PipelineError, match="3a1_beta replays 3a1_alpha's train split"):
        pipeline.run("3a1_beta", root=tmp_path, preset="cpu", steps=["mix"])  # before any work
    pipeline.generate_step(tmp_path, "format_lock_alpha")
    pipeline.generate_step(tmp_path, "echo_beta")
    pipeline.prepare_step(tmp_path, alpha)

    replays = replay.plan("cpu", beta)
    assert replays == [("3a1_alpha", 1.0)] and replay.plan("real", beta) == []
    first = pipeline.replay_step(tmp_path, "3a1_alpha")
    assert first["status"] == "done"
    assert pipeline.replay_step(tmp_path, "3a1_alpha")["status"] == pipeline.SKIPPED
    # The replayed records are alpha's train split exactly, in order: prepared alone, they give
    # alpha's train/ files byte for byte (and none of its val episodes).
    again = prepare(first["path"], tmp_path / "replayed", val_split=0.0, progress=False)
    assert again["num_train_episodes"] == first["records"] == _lines(first["path"])
    for name in ("tokens.bin", "mask.bin", "episodes.idx"):
        assert ((tmp_path / "replayed" / "train" / name).read_bytes()
                == (tmp_path / alpha.prepared / "train" / name).read_bytes()), name

    # Beta mixes its own echo data and alpha's train split (not the whole alpha file).
    mixed = pipeline.mix_step(tmp_path, beta, None, replays)
    n_echo = _lines(tmp_path / pipeline.GENERATED["echo_beta"].path)
    assert mixed["records"] == n_echo + first["records"] == _lines(mixed["path"])
    assert pipeline.mix_step(tmp_path, beta, None, replays)["status"] == pipeline.SKIPPED
    assert pipeline.mix_step(tmp_path, beta, None)["status"] == "done"  # the seed's mix: redone
    assert pipeline.mix_step(tmp_path, beta, None, [("3a1_alpha", 0.5)])["records"] == (
        n_echo + first["records"] // 2)

    source = tmp_path / pipeline.GENERATED["format_lock_alpha"].path
    source.write_text(source.read_text() + source.read_text().splitlines()[0] + "\n")
    with pytest.raises(pipeline.PipelineError, match="no longer describes .* prepare 3a1_alpha again"):
        pipeline.replay_step(tmp_path, "3a1_alpha")
    for table, match in [({"3a1_gamma": 1.0}, "'3a1_gamma' is not an earlier phase"),
                         ({"3a1_alpha": 0}, "expected a ratio > 0, got 0")]:
        monkeypatch.setattr(replay, "preset_replay", lambda preset, name, t=table: t)
        with pytest.raises(pipeline.PipelineError, match=r"configs/pipeline_cpu.py REPLAY\['3a1_beta'\]"):
            replay.plan("cpu", beta)
        with pytest.raises(pipeline.PipelineError, match=match):
            replay.plan("cpu", beta)


# ----------------------------------------------------------------------------- end to end


def _check_programs_compile_once(summaries: list[dict]) -> None:
    """Across the phases every distinct program compiles once: a program an earlier phase
    compiled is a persistent-cache hit, and the first phase (a fresh cache) misses on all."""
    seen: set[tuple[str, str]] = set()
    repeated = 0
    for s in summaries:
        records = s["train"]["compiles"]
        assert {r["program"] for r in records} == {"train", "eval", "generate"}, records
        for r in records:
            key = (r["program"], r["shape"])
            assert r["cache_hit"] is (key in seen), (s["phase"], r)
            repeated += key in seen
            seen.add(key)
        log = [json.loads(x) for x in Path(s["train"]["log"]).read_text().splitlines()]
        assert not [r for r in log if r.get("event") == "compile" and not r["ahead"]]
    assert repeated >= 2  # the later phases reuse programs (else this checks nothing)


def _check_summary_is_true(s: dict, root: Path) -> None:
    import mypt_jax
    from mypt_jax.training.checkpoint.run_meta import latest_run_meta

    phase = pipeline.PHASES[s["phase"]]
    d = s["data"]
    for path, n in {**d["generated"], **d["replayed"]}.items():
        assert n == _lines(path)
    if phase.mix_output:  # the CPU preset: its own data whole, earlier train splits at ratios
        assert d["mixed"]["records"] == _lines(root / phase.mix_output) == sum(
            d["mixed"]["sources"].values())
        assert d["mixed"]["sources"].keys() == {**d["generated"], **d["replayed"]}.keys()
        assert all(d["mixed"]["sources"][path] == n for path, n in d["generated"].items())
    p = s["data"]["prepared"]
    counted = {}
    for split in episodes.SPLITS:
        shards = episodes.read_split(Path(p["dir"]) / split)
        counted[split] = (sum(len(sh.episodes_Ex2) for sh in shards),
                          sum(len(sh.tokens_N) for sh in shards))
    assert (p["train_episodes"], p["train_tokens"]) == counted["train"]
    assert (p["val_episodes"], p["val_tokens"]) == counted["val"]
    assert p["records"] == _lines(p["source"]) == p["train_episodes"] + p["val_episodes"]

    t = s["train"]
    meta = latest_run_meta(t["workdir"])
    assert meta["finished"] and meta["step"] == t["steps"] == TINY["max_iters"]
    assert Path(t["checkpoint"]).name == str(t["steps"]) and Path(t["checkpoint"]).is_dir()
    log = [json.loads(line) for line in Path(t["log"]).read_text().splitlines()]
    final = [r for r in log if r.get("final")]
    assert final and final[-1]["val_loss"] == t["final_val_loss"]
    assert Path(t["loss_plot"]).read_bytes()[:4] == b"\x89PNG"
    trained = [(r["iter"], r["train_loss"]) for r in log if "train_loss" in r]
    assert (t["train_loss"]["first"], t["train_loss"]["last"]) == ([*trained[0]], [*trained[-1]])
    windows = [r for r in log if "step_time" in r]  # the log windows' medians
    assert t["step_time_s"] == statistics.median(r["step_time"] for r in windows)
    assert t["wall_time_s"] == meta["summary"]["wall_time_s"]
    assert t["mfu"] == pytest.approx(t["model_flops_per_s"] / t["peak_flops_per_s"])
    assert t["peak_source"].startswith("measured float32 matmul")
    model = mypt_jax.load(t["model_dir"])
    assert model.config.n_embd == TINY["n_embd"]

    prompts = json.loads((REPO / phase.test_prompts).read_text())
    test = s["test"]
    assert [r["name"] for r in test["results"]] == list(prompts["prompts"])
    for r in test["results"]:
        assert r["expected"] == prompts["expected_outputs"][r["name"]]
        assert r["exact"] == (r["completion"] == r["expected"])
    assert test["exact"] == sum(r["completion"] == r["expected"] for r in test["results"])
    assert (s["verdict"] == "ok") == (s["red_lines"] == [])
    assert json.loads(Path(s["summary_file"]).read_text())["train"] == t


@pytest.mark.slow
def test_all_phases_on_cpu_chain_and_report_truly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default root "." (relative paths must work end to end)
    from mypt_jax.training.evals import val_loss as val_lib

    # The test hook: alpha's val split, watched as an eval set by the later phases, reads 3x
    # its loss from a run's second eval on: the forgetting red line must fire there.
    val_loss, calls = val_lib.ValLoss.__call__, {}

    def alpha_forgotten(self, params, position):
        got = val_loss(self, params, position)
        calls[id(self)] = calls.get(id(self), 0) + 1
        return tuple(3 * x for x in got) if self.name == "3a1_alpha" and calls[id(self)] > 1 else got

    monkeypatch.setattr(val_lib.ValLoss, "__call__", alpha_forgotten)
    cache = {"compilation_cache_dir": str(tmp_path / "xla")}  # fresh: phase 1 compiles all
    summaries = pipeline.run("all", preset="cpu", overrides={**TINY, **cache})
    _check_programs_compile_once(summaries)
    assert [s["phase"] for s in summaries] == list(pipeline.PHASES)
    for i, s in enumerate(summaries):
        sets, earlier = s["train"]["eval_sets"], list(pipeline.PHASES)[:i]
        assert list(sets) == earlier  # beta watches alpha, gamma alpha and beta, 3a-2 all three
        log = [json.loads(x) for x in Path(s["train"]["log"]).read_text().splitlines()]
        evals = [r for r in log if "val_loss" in r]
        for name in earlier:
            assert sets[name] == {"first": evals[0][f"val_loss/{name}"],
                                  "final": evals[-1][f"val_loss/{name}"]}
        forgot = [f for f in s["red_lines"] if f.startswith("forgetting: ")]
        if i:
            assert sets["3a1_alpha"]["final"] > 1.5 * sets["3a1_alpha"]["first"]
            assert len(forgot) == 1 and " on 3a1_alpha " in forgot[0], s["red_lines"]
            assert all(f" {n} " not in forgot[0] for n in earlier[1:])
        else:
            assert not forgot
    table = pipeline.format_summary(summaries).split("forgetting: each phase's val loss")[1]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows["3a1_alpha"][0] == f"{summaries[0]['train']['final_val_loss']:.4f}"
    assert rows["3a1_alpha"][3] == f"{summaries[3]['train']['eval_sets']['3a1_alpha']['final']:.4f}"
    assert rows["3a2"] == ["-", "-", "-", f"{summaries[3]['train']['final_val_loss']:.4f}"]
    from mypt_jax.training.checkpoint.run_meta import latest_run_meta

    previous_workdir = ""
    for s in summaries:
        _check_summary_is_true(s, tmp_path)
        assert s["train"]["init_from"] == (previous_workdir or None)
        assert latest_run_meta(s["train"]["workdir"])["config"]["init_from"] == previous_workdir
        previous_workdir = s["train"]["workdir"]
    seen = set()  # a dataset that an earlier phase generated is already complete
    for s in summaries:
        for step, v in s["steps"].items():
            assert v["status"] == (pipeline.SKIPPED if step in seen else "done"), (s["phase"], step)
            if step.startswith(("generate ", "replay ")):
                seen.add(step)

    again = pipeline.run("all", preset="cpu", overrides={**TINY, **cache})
    assert all(v["status"] == pipeline.SKIPPED for s in again for v in s["steps"].values())
    for a, b in zip(summaries, again, strict=True):
        assert (a["data"], a["train"], a["test"], a["verdict"]) == (
            b["data"], b["train"], b["test"], b["verdict"])
