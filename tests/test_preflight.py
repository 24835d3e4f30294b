"""The preflight: ahead-of-time compiles for TPU slices, fit decisions, the fix it names."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

from mypt_jax.parallel import sharding
from mypt_jax.preflight import report as preflight
from mypt_jax.training.compilation import fit_check
from mypt_jax.training.setup import config as cfg_lib
from mypt_jax.training.step import optim

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def _tiny(**overrides):
    from configs import cpu_tiny

    c = cpu_tiny.get_config()
    for k, v in overrides.items():
        c[k] = v
    return c


def _cli(tmp_path, *args, name="report.json"):
    """Runs the preflight in a fresh process (libtpu must load before JAX picks a backend)."""
    out = tmp_path / name
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-m", "mypt_jax.preflight", *args, "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


# ----------------------------------------------------------------------------- unit


class _FakeStep:
    def __init__(self, compiled=None, error=None):
        self.compiled, self.error, self.lowered = compiled, error, 0

    def lower(self, state, batch):
        self.lowered += 1
        assert set(batch) >= {"inputs", "targets", "loss_mask"}
        return types.SimpleNamespace(compile=self._compile)

    def _compile(self):
        if self.error:
            raise self.error
        return self.compiled


def _fake_compiled(temp):
    stats = types.SimpleNamespace(argument_size_in_bytes=GIB, output_size_in_bytes=GIB,
                                  alias_size_in_bytes=GIB, temp_size_in_bytes=temp,
                                  generated_code_size_in_bytes=0)
    return types.SimpleNamespace(memory_analysis=lambda: stats)


def test_run_start_check_decides_from_the_compiled_step():
    r = cfg_lib.resolve(_tiny(), "unused", num_devices=1, process_count=1, read_files=False)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    tx, _ = optim.optimizer_from_config(r.config)
    # CPU reports no allocator limit: nothing is compiled, nothing to say.
    cpu = _FakeStep(_fake_compiled(100 * GIB))
    assert fit_check.check_train_step(cpu, r, tx, mesh) is None and cpu.lowered == 0
    assert fit_check.check_train_step(_FakeStep(_fake_compiled(GIB)), r, tx, mesh,
                                      capacity=16 * GIB) is None
    problem = fit_check.check_train_step(_FakeStep(_fake_compiled(20 * GIB)), r, tx, mesh,
                                         capacity=16 * GIB)
    assert "needs 21.00 GiB" in problem and "16.00 GiB" in problem and "8x64" in problem
    oom = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                       "for HLO temporaries (41.41G) exceeds available HBM (15.75G).")
    assert "41.41G" in fit_check.check_train_step(_FakeStep(error=oom), r, tx, mesh,
                                                   capacity=16 * GIB)
    with pytest.raises(ValueError, match="other"):
        fit_check.check_train_step(_FakeStep(error=ValueError("other")), r, tx, mesh,
                                   capacity=16 * GIB)


def test_suggestion_is_the_first_change_that_fits(monkeypatch):
    target = preflight.Target("local", jax.devices()[:1], 1, None, 8 * GIB, None)
    seen = []

    def fake_compile(program, target):
        seen.append(program.model.remat)
        return {"fits": program.model.remat == "full", "name": program.name}

    monkeypatch.setattr(preflight, "compile_program", fake_compile)
    s = preflight.suggest(_tiny(), target)
    # Tried in order: the all-fsdp mesh, remat dots, then remat full, which fits.
    assert [t["change"] for t in s["tried"]] == [
        "--config.mesh_data=1 --config.mesh_fsdp=-1", "--config.remat=dots",
        "--config.remat=full"]
    assert s["change"] == "--config.remat=full" and seen == ["none", "dots", "full"]


def test_local_cpu_report_counts_host_memory_without_a_staged_copy():
    # CPU runs save synchronously, so the host peak is the largest program on every local
    # device, with no checkpoint copy beside it.
    report = preflight.run(_tiny(), None, find_fix=False, kinds=("train",),
                           largest_only=True)
    host, train = report["host"], report["programs"][0]
    local = len(jax.devices())
    assert host["checkpoint_staging_bytes"] == 0 and host["state_bytes"] > 0
    assert host["peak_bytes"] == train["memory"]["required"] * local > 0
    assert host["fits"] and report["fits"] and report["phase"] is None
    # A machine with less RAM than that peak does not fit.
    small = preflight.Target("local", jax.devices(), 1, None, None, host["peak_bytes"] - 1)
    r = preflight.resolve_for(_tiny(), small)
    mesh = sharding.make_mesh(r.mesh_shape, devices=small.devices)
    assert not preflight.host_report(r, mesh, small, report["programs"])["fits"]


def test_gpu_memory_fraction_is_the_launch_scripts():
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    from mypt_jax.parallel import device_memory

    assert float(gpu.DEFAULT_MEM_FRACTION) == device_memory.GPU_MEM_FRACTION


# ----------------------------------------------------------------------------- TPU compiles


@pytest.mark.slow
def test_tiny_model_on_v5e_4(tmp_path):
    proc, report = _cli(
        tmp_path, "--config=configs/cpu_tiny.py", "--topology", "v5e-4",
        "--config.eval_prompts_file=configs/sft_eval/phase3a1_alpha_test_prompts.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fits" in proc.stdout.splitlines()[-1]
    assert report["fits"] and report["target"]["devices"] == 4
    assert report["target"]["chip"]["name"] == "v5e"
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    kinds = [p["kind"] for p in report["programs"]]
    assert kinds == ["train", "eval", "decode"]
    train = report["programs"][0]
    assert train["shape"] == {"rows": 8, "length": 64, "positions": 0, "packed": False,
                              "flat": False}
    m = train["memory"]
    assert m["required"] == (m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
                             + m["code"])
    assert 0 < m["required"] < report["target"]["capacity_per_device"]
    # The donated state aliases its update.
    assert m["aliased"] > 0.9 * m["arguments"]
    # FLOPs from the model's formula; HBM bytes from the HLO, split by kind of work.
    assert train["model_flops"] > 0 and train["xla_cost"]["bytes_accessed"] > 0
    hbm = train["hbm"]
    assert hbm["unknown_loops"] == 0 and hbm["matmul"] > 0 and hbm["other"] > 0
    assert train["hbm_bytes"] == pytest.approx(  # the JSON keeps 4 significant digits
        hbm["matmul"] + hbm["async_copy"] + hbm["collective"] + hbm["other"], rel=1e-3)
    assert 0 < train["roofline"]["mfu"] <= train["roofline"]["mfu_bound"] <= 1
    # Eval and generation run while the optimizer state stays in memory.
    assert report["programs"][1]["memory"]["resident"] > 0
    assert report["phase"]["max_iters"] == 40 and report["phase"]["padded"]
    assert report["phase"]["train_s"] > 0
    assert report["host"]["checkpoint_staging_bytes"] == report["host"]["state_bytes"]


@pytest.mark.slow
def test_a_batch_too_big_for_the_chip_fails(tmp_path):
    # 16384 rows x 64 positions x 50304 logits in float32 is ~200 GiB of temporaries.
    proc, report = _cli(tmp_path, "--config=configs/cpu_tiny.py", "--topology", "v5e-4",
                        "--config.batch_size=16384", "--programs", "train", "--no_suggest",
                        )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "DOES NOT FIT" in proc.stdout
    assert not report["fits"] and not report["programs"][0]["fits"]
    assert report["programs"][0]["memory"]["temporaries"] > 16 * GIB


@pytest.mark.slow
def test_device_order_on_v5p_32_and_two_v5p_8_slices(tmp_path):
    common = ("--config=configs/cpu_tiny.py", "--programs", "train", "--largest_shape_only",
              "--no_suggest", "--config.mesh_data=1",
              "--config.mesh_fsdp=-1")
    proc, report = _cli(tmp_path, *common, "--topology", "v5p-32", "--config.batch_size=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("mesh devices"))
    assert "listed order: no" in lines[at]
    row = lines[at + 1]
    assert row.startswith("  data 0 host 0-3: 0(0,0,0) ") and row.count(" | ") == 3
    order = report["mesh_devices"]
    assert sorted(order["ids"][0][i][0] for i in range(16)) == list(range(16))
    assert [order["process"][0][i][0] for i in range(16)] == [p for p in range(4) for _ in range(4)]

    proc, report = _cli(tmp_path, *common, "--topology", "v5p-8", "--slices", "2",
                        "--config.mesh_dcn_data=2", name="slices.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert report["mesh_dcn"] == {"data": 2, "fsdp": 1, "tensor": 1}
    assert report["target"]["slices"] == 2 and report["fits"]
    assert report["mesh_devices"]["slice"] == [[[0]] * 4, [[1]] * 4]
    assert "  data 1 slice 1 host 1: 200000(0,0,0)" in proc.stdout

    # One slice's devices carry no slice_index: a config error naming the fields.
    proc, _ = _cli(tmp_path, *common, "--topology", "v5p-8", "--config.mesh_dcn_data=2",
                   name="one_slice.json")
    assert proc.returncode == 2
    assert "preflight: mesh_dcn_data/mesh_dcn_fsdp/mesh_dcn_tensor: " in proc.stderr
    assert "slice_index" in proc.stderr


FSDP_PRESET = '''
from configs import cpu_tiny


def get_config():
    c = cpu_tiny.get_config()
    c.n_layer, c.n_embd, c.n_head, c.block_size, c.vocab_size = 2, 512, 8, 256, 4096
    c.batch_size = 16
    c.precision = "mixed"
    c.length_buckets = (256,)
    return c
'''


@pytest.mark.slow
def test_fsdp_temporaries_do_not_exceed_data_parallel(tmp_path):
    # Before the residual stream was pinned to the batch split, XLA kept activations whole
    # on every fsdp shard: this model's temporaries were 532 MB at fsdp=8 against 36 MB at
    # data=8 (7 MB at fsdp=8 after).
    preset = tmp_path / "fsdp_preset.py"
    preset.write_text(FSDP_PRESET)
    temps = {}
    for name, (d, f) in {"data": (8, 1), "fsdp": (1, 8)}.items():
        proc, report = _cli(tmp_path, f"--config={preset}", "--topology", "v5e-8",
                            f"--config.mesh_data={d}", f"--config.mesh_fsdp={f}",
                            "--programs", "train", "--no_suggest",
                            name=f"{name}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert report["mesh"]["fsdp"] == f
        temps[name] = report["programs"][0]["memory"]["temporaries"]
    assert temps["fsdp"] <= temps["data"], temps


def _gamma(**fields):
    from configs import phase3a1_gamma

    c = phase3a1_gamma.get_config()
    c.update(fields)
    return cfg_lib.resolve(c, "/tmp/unused", num_devices=4, process_count=1, read_files=False)


def test_predicted_saves_follow_the_policy_in_force():
    from mypt_jax.preflight.run_model import save_time

    state_bytes = save_time(_gamma(), 600.0)["state_bytes"]
    copy_s, write_s = state_bytes / 10e9, state_bytes / 1e9
    # 750M weights + AdamW moments (launch/README.md).
    assert state_bytes / 2**30 == pytest.approx(7.76, abs=0.01)
    # The upstream's cadence: a save at each eval before the end (steps 0, 100, ..., 2400)
    # plus the final one. 600 s of steps between 26 saves cover ~23 s each, more than an 8 s
    # write: each blocks for its copy only, the final one too; then the end waits for the
    # rest of the final write and model/.
    upstream = save_time(_gamma(checkpoint_at_eval=True, checkpoint_minutes=0.0), 600.0)
    assert upstream["saves_by_trigger"] == {"final": 1, "eval": 25}
    assert upstream["save_blocking_s"] == pytest.approx(copy_s, rel=1e-3)
    assert upstream["save_loop_s"] == pytest.approx(26 * copy_s, rel=1e-3)
    weights_s = state_bytes / 3 / 1e9  # float32 weights: a third of the state
    assert upstream["export_s"] == pytest.approx(weights_s, rel=1e-3)
    assert upstream["save_end_s"] == pytest.approx(write_s + weights_s, rel=1e-3)
    # 60 s of steps between them cover ~2 s of the write: the loop waits for the rest.
    tight = save_time(_gamma(checkpoint_at_eval=True, checkpoint_minutes=0.0), 60.0)
    assert copy_s < tight["save_blocking_s"] < copy_s + write_s
    # Time saves: 3 hours at 15 minutes = 12; permanent ones every 1000 of 2500 steps = 2.
    timed = save_time(_gamma(checkpoint_interval=1000), 3 * 3600.0)
    assert timed["saves_by_trigger"] == {"final": 1, "interval": 2, "time": 12}
    assert timed["saves"] == 15
    # The default: shorter than checkpoint_minutes, the final save alone.
    assert save_time(_gamma(), 600.0)["saves_by_trigger"] == {"final": 1, "time": 0}
    # On CPU saves are synchronous: each blocks its whole write.
    sync = save_time(_gamma(checkpoint_interval=1000), 600.0, accelerator=False)
    assert not sync["save_async"] and sync["save_loop_s"] == pytest.approx(
        3 * (copy_s + write_s), rel=1e-3)
    assert sync["save_end_s"] == pytest.approx(weights_s, rel=1e-3)
    # Handing off to the next phase: the final writes go on behind it.
    assert save_time(_gamma(), 600.0, hands_off=True)["save_end_s"] == 0


def _program(name: str, kind: str):
    from mypt_jax.preflight import programs as tp

    return tp.Program(name, kind, None, None, 0.0, 0.0, None, 0, {"rows": 1, "length": 1})


def test_one_model_of_a_run_from_its_programs():
    from mypt_jax.preflight import run_model

    r = _gamma()  # 2500 updates, an eval every 100: 26 evals
    jobs = [run_model.Job(_program("generate", "decode"), 26, 0),
            run_model.Job(_program("eval 16x64", "eval"), 26 * 4, 0),
            run_model.Job(_program("train 16x64", "train"), 2000, 0),
            run_model.Job(_program("train 16x512", "train"), 500, 1250)]  # reached halfway

    def result(step_s, compile_s):
        return {"compile_s": compile_s, "roofline": {"step_s": step_s}}

    results = {"generate": result(0.5, 20.0), "eval 16x64": result(0.004, 10.0),
               "train 16x64": result(0.012, 30.0), "train 16x512": result(0.04, 60.0)}

    def row(config=r, new=frozenset(results), **kw):
        plan = run_model.PhasePlan(config, 26, jobs, False, None)
        return run_model.phase_row(plan, results, set(new), hosts=1, accelerator=True,
                                   compile_threads=2, **kw)

    alone = row()
    assert alone["train_s"] == pytest.approx(2000 * 0.012 + 500 * 0.04)
    assert alone["eval_s"] == pytest.approx(26 * 0.5 + 104 * 0.004)
    # Two threads in order: generate 0-20, eval 0-10, train 16x64 10-40, train 16x512 20-80.
    # Step 0 waits for the first three (40 s); the 16x512 program is reached halfway through
    # the run's steps and evals, and waits for whatever of its compile is left.
    run_s = alone["train_s"] + alone["eval_s"]
    assert alone["compile_before_step0_s"] == pytest.approx(40.0)
    assert alone["compile_waits_s"] == pytest.approx(max(80.0 - (40.0 + run_s / 2), 0.0))
    assert alone["compile_waits_s"] > 0 and alone["compile_serial_s"] == pytest.approx(120.0)
    # Without background compiles everything is waited for before step 0.
    off = row(_gamma(compile_background="off"))
    assert off["compile_wall_s"] == pytest.approx(80.0) and off["compile_waits_s"] == 0
    # Programs an earlier phase compiled load from the cache: no time.
    assert row(new=())["compile_wall_s"] == 0
    # In a curriculum the train and eval programs compile one after another while the phase
    # before runs (not the generation, which runs on weights). Given 25 s: the eval (10 s)
    # is ready, the 16x64 step (30 s) still compiling at the start, which waits 15 s for it;
    # the 16x512 step compiles at the start, behind the steps.
    early = row(ahead_s=25.0)
    assert early["compile_before_step0_s"] == pytest.approx(15.0 + 20.0)  # + the generation
    assert early["compile_serial_s"] == alone["compile_serial_s"]
    everything = row(ahead_s=1000.0)
    assert everything["compile_before_step0_s"] == pytest.approx(20.0)
    assert everything["compile_waits_s"] == 0
    # The phase's total is the same whether it hands off or not; the end differs: alone, the
    # rest of the final write and the exports; handing off, none (they overlap the next).
    handing = row(hands_off=True)
    sv = alone["saves"]
    copy_s = sv["state_bytes"] / 10e9
    assert alone["save_s"] == handing["save_s"] == pytest.approx(copy_s)  # the final save's
    assert alone["end_s"] == pytest.approx(sv["save_write_s"] - copy_s + sv["export_s"])
    assert handing["end_s"] == 0
    for key in ("compile_wall_s", "train_s", "eval_s", "save_s", "total_s"):
        assert handing[key] == alone[key]
    assert alone["total_s"] == pytest.approx(alone["compile_wall_s"] + run_s + alone["save_s"])
    assert "behind the next phase" in run_model.describe(handing)
    assert "until the final save and the exports are written" in run_model.describe(alone)


def test_compile_wall_waits_for_step_zero_and_for_what_is_late():
    from mypt_jax.preflight.run_model import compile_wall

    assert compile_wall([], [], 4) == (0.0, 0.0)
    assert compile_wall([10, 9, 8, 1], [0.0] * 4, 1) == (28, 0.0)  # one after another
    assert compile_wall([10, 9, 8, 1], [0.0] * 4, 2) == (17, 0.0)  # in order: 10+1 | 9+8
    # Behind the steps: ready at 10 + 5 = 15, reached at 10 + 3: waits 2 s.
    assert compile_wall([10, 5], [0.0, 3.0], 1) == (10, 2.0)
    assert compile_wall([10, 5], [0.0, 30.0], 1) == (10, 0.0)  # ready before it is needed
    assert compile_wall([10, 5], [0.0, None], 1) == (10, 0.0)  # never called: not waited


@pytest.mark.slow
def test_a_curriculum_compiles_each_program_once_and_sums_its_phases(tmp_path):
    import train_helpers

    dataset = train_helpers.make_dataset(tmp_path)
    common = ["--topology", "v5e-4", f"--config.dataset_dir={dataset}",
              "--config.eval_prompts_file=configs/sft_eval/phase3a1_alpha_test_prompts.json"]
    # Two phases that differ in their hyperparameters only: one set of programs.
    second_phase = tmp_path / "second_phase.py"
    second_phase.write_text("from configs import cpu_tiny\n\n\ndef get_config():\n"
                            "    c = cpu_tiny.get_config()\n    c.learning_rate = 1e-4\n"
                            "    c.weight_decay = 0.05\n    c.max_iters = 20\n    return c\n")
    proc, report = _cli(tmp_path, "--config=configs/cpu_tiny.py", f"--config={second_phase}",
                        *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = report["phases"]
    assert first["new_programs"] == len(first["programs"]) >= 3
    assert {p.split()[0] for p in first["programs"]} == {"train_step", "eval_step", "generate"}
    assert second["programs"] == first["programs"] and second["new_programs"] == 0
    assert second["compile_serial_s"] == second["compile_wall_s"] == 0
    assert 0 < first["compile_wall_s"] <= first["compile_serial_s"]
    for key in ("compile_wall_s", "train_s", "eval_s", "save_s", "end_s"):
        assert report["total"][key] == pytest.approx(first[key] + second[key], rel=1e-3)
    # The first phase hands off (its final writes go on behind the second); the job waits
    # for the last one's.
    assert first["end_s"] == 0 < second["end_s"]
    assert report["total"]["total_s"] == pytest.approx(
        first["total_s"] + second["total_s"] + second["end_s"], rel=1e-3)
    assert first["train_s"] > 0 and first["eval_s"] > 0
    assert second["max_iters"] == 20 and second["train_s"] < first["train_s"]
    # Four data-parallel chips all-reduce the gradients: the roofline counts the link time.
    train = next(p for p in report["programs"] if p["kind"] == "train")
    assert train["hbm"]["collective"] > 0 and train["roofline"]["collective_s"] > 0
    assert "four-phase wall-clock" in proc.stdout
    # One model of a run: the single-config form of the second phase names the same train
    # programs and, its compiles aside, the same phase total as the curriculum's row.
    proc, alone = _cli(tmp_path, f"--config={second_phase}", *common, name="alone.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trains = sorted(p["name"] for p in alone["programs"] if p["kind"] == "train")
    assert trains == sorted(p for p in second["programs"] if p.startswith("train_step"))
    assert alone["phase"]["total_less_compile_s"] == pytest.approx(
        second["total_less_compile_s"], rel=1e-3)
    assert alone["phase"]["end_s"] > 0 and alone["phase"]["compile_wall_s"] > 0


# ----------------------------------------------------------------------------- upstream recipes

FULL_PHASE3 = "tests/fixtures/upstream_configs/full/phase3_chat_sft.json"  # the upstream's, unshrunk
# The upstream's 750M RoPE/SwiGLU/RMSNorm model, head tied to the embedding: the unique
# parameters of its state_dict (the project's spec, UPSTREAM_MODEL.md section 5).
PHASE3_PARAMS = 698_911_104


def test_upstream_recipe_flags_need_none_of_the_runs_files(tmp_path):
    from mypt_jax.interop import upstream_cli

    argv = ["--config_file", FULL_PHASE3, "--init_from_model", "no_such_model",
            "--dataset_dir", str(tmp_path / "absent"), "--topology", "v5p-8",
            "--config.max_iters=200"]
    translation, rest, keep = upstream_cli.from_argv(argv, check_init=False)
    assert rest == [f"--config={upstream_cli.base_preset()}", "--topology", "v5p-8",
                    "--config.max_iters=200"] and keep == {"max_iters"}
    assert translation.overrides["init_from"] == os.path.join("checkpoints", "no_such_model")
    assert "from the init model" in translation.summary  # as mypt_jax.train would say
    with pytest.raises(upstream_cli.UpstreamConfigError, match="no_such_model does not exist"):
        upstream_cli.from_argv(argv)  # training looks for the init checkpoint
    # Where it exists, both translate alike (an absolute path is taken as it is).
    (tmp_path / "init").mkdir()
    there = [*argv[:3], str(tmp_path / "init"), *argv[4:]]
    assert upstream_cli.from_argv(there, check_init=False) == upstream_cli.from_argv(there)
    (config,) = preflight.load_configs([rest[0].split("=", 1)[1]], rest[-1:], "", translation, keep)
    assert (config.max_iters, config.batch_size, config.grad_accum_steps) == (200, 12, 3)
    with pytest.raises(ValueError, match="one phase's recipe"):
        preflight.load_configs(["configs/cpu_tiny.py"] * 2, [], "", translation, keep)


@pytest.mark.slow
def test_the_upstream_phase3_recipe_at_full_size_on_v5p_8(tmp_path):
    # The largest train step alone: XLA's TPU compile of its one scanned block at 4096
    # positions (35-60 s on 2 CPU cores) is nearly all of the test's time.
    proc, report = _cli(tmp_path, "--config_file", FULL_PHASE3, "--topology", "v5p-8",
                        "--init_from_model", "phase2_gold", "--dataset_dir", "data/absent",
                        "--programs", "train", "--largest_shape_only", "--no_suggest",
                        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("batch_size x grad_accum_steps -> batch_size 12 in 3 microbatches (upstream: per "
            "microbatch)") in proc.stderr
    assert report["batch_size"] == 12 and report["grad_accum_steps"] == 3  # 3 x 4 rows
    (train,) = report["programs"]
    assert (train["shape"]["rows"], train["shape"]["length"]) == (12, 4096)
    assert report["model"]["params"] == PHASE3_PARAMS and report["model"]["remat"] == "full"
    assert "| 698.9M params | remat full | batch 12 (accum 3)" in proc.stdout.splitlines()[0]
    # fp32 weights and two AdamW moments, 12 bytes a parameter (7.81 GiB), in every program.
    assert 12 * PHASE3_PARAMS <= report["host"]["state_bytes"] < 12 * PHASE3_PARAMS + 1024
    m = train["memory"]
    assert m["arguments"] >= 12 * PHASE3_PARAMS and m["temporaries"] > 0
    assert m["required"] < train["capacity"] == report["target"]["capacity_per_device"]
    assert train["fits"] and report["fits"] and proc.stdout.splitlines()[-1] == "fits"
