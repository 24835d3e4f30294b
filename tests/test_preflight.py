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
    report = preflight.run(_tiny(), None, mix_batches=0, find_fix=False, kinds=("train",),
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
        tmp_path, "--config=configs/cpu_tiny.py", "--topology", "v5e-4", "--mix_batches", "0",
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
    assert report["phase"]["max_iters"] == 40 and report["phase"]["padded_train_s"] > 0
    assert report["host"]["checkpoint_staging_bytes"] == report["host"]["state_bytes"]


@pytest.mark.slow
def test_a_batch_too_big_for_the_chip_fails(tmp_path):
    # 16384 rows x 64 positions x 50304 logits in float32 is ~200 GiB of temporaries.
    proc, report = _cli(tmp_path, "--config=configs/cpu_tiny.py", "--topology", "v5e-4",
                        "--config.batch_size=16384", "--programs", "train", "--no_suggest",
                        "--mix_batches", "0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "DOES NOT FIT" in proc.stdout
    assert not report["fits"] and not report["programs"][0]["fits"]
    assert report["programs"][0]["memory"]["temporaries"] > 16 * GIB


@pytest.mark.slow
def test_device_order_on_v5p_32_and_two_v5p_8_slices(tmp_path):
    common = ("--config=configs/cpu_tiny.py", "--programs", "train", "--largest_shape_only",
              "--no_suggest", "--mix_batches", "0", "--config.mesh_data=1",
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
                            "--mix_batches", "0", name=f"{name}.json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert report["mesh"]["fsdp"] == f
        temps[name] = report["programs"][0]["memory"]["temporaries"]
    assert temps["fsdp"] <= temps["data"], temps


def test_phase_times_from_a_report(tmp_path):
    import train_helpers

    from mypt_jax.preflight import chips

    # A report as the preflight writes it, for a v5p-8 whose steps cost 30 ms (block 512) and
    # 10 ms (bucket 64); each phase's dataset is a tiny prepared one.
    chip = chips.CHIPS["v5p"]

    def train(length, step_s):
        hbm = (step_s - 1e12 / 4 / chip.bf16_flops) * chip.hbm_bandwidth
        roof = chips.roofline(chip, model_flops=1e12, executed_flops=1e12, hbm_bytes=hbm,
                              devices=4)
        return {"kind": "train", "fits": True, "roofline": roof, "hbm_bytes": hbm,
                "shape": {"rows": 16, "length": length, "positions": 0, "packed": False}}

    report = {"target": {"name": "v5p-8", "devices": 4, "hosts": 1, "chip": {"name": "v5p"},
                         "capacity_per_device": 95e9},
              "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
              "model": {"remat": "none"}, "batch_size": 16, "grad_accum_steps": 1,
              "programs": [train(512, 0.030), train(64, 0.010)]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    dataset = train_helpers.make_dataset(tmp_path)
    for phase in ("phase3a1_alpha", "phase3a1_beta", "phase3a1_gamma", "phase3a2"):
        (tmp_path / "root" / "data" / "sft_ready").mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / "data" / "sft_ready" / phase).symlink_to(dataset)
    out = subprocess.run([sys.executable, "benchmarks/phase_times.py", "--report",
                          str(tmp_path / "report.json"), "--root", str(tmp_path / "root"),
                          "--batches", "20"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    phases = json.loads(out.stdout)["phases"]
    gamma = phases["3a1_gamma"]
    assert gamma["max_iters"] == 2500
    assert gamma["padded_train_s"] == pytest.approx(2500 * 0.030, rel=1e-3)
    # Every row of the tiny dataset fits the 64 bucket, and projects few positions.
    assert all(k.startswith("16x64/") for k in gamma["shape_mix"])
    assert sum(gamma["shape_mix"].values()) == pytest.approx(1.0)
    # The 64 bucket's memory term, plus the 750M model's FLOPs of each shape.
    assert 2500 * 0.009 < gamma["padding_free_train_s"] < gamma["padded_train_s"]
    assert phases["3a2"]["max_iters"] == 4000
    # Evals: the tiny dataset's 12 val episodes are one padding-free batch per eval (the
    # rebuilt val loss computes each distinct episode once), a forward pass = a third of a step.
    assert gamma["eval_batches_rebuilt"] == 1 and gamma["evals"] == 26
    assert gamma["eval_s_padding_free"] == pytest.approx(
        gamma["padding_free_train_s"] / 2500 / 3, rel=1e-2)
    # Saves under the default policy: the phase is shorter than checkpoint_minutes, so the
    # final save alone, 7.76 GiB of 750M weights + AdamW moments (launch/README.md) at the
    # stated 10 GB/s copy and 1 GB/s write per host, counted whole: the run waits for it.
    assert gamma["saves_by_trigger"] == {"final": 1, "time": 0} and gamma["save_async"]
    assert gamma["state_bytes"] / 2**30 == pytest.approx(7.76, abs=0.01)
    copy_s, write_s = gamma["state_bytes"] / 10e9, gamma["state_bytes"] / 1e9
    assert gamma["save_write_s"] == pytest.approx(copy_s + write_s, rel=1e-3)
    assert gamma["save_total_blocking_s"] == pytest.approx(copy_s + write_s, rel=1e-3)
    assert gamma["total_padding_free_s"] == pytest.approx(
        gamma["padding_free_train_s"] + 26 * gamma["eval_s_padding_free"]
        + gamma["save_total_blocking_s"], rel=1e-3)


def _gamma(**fields):
    from configs import phase3a1_gamma

    c = phase3a1_gamma.get_config()
    c.update(fields)
    return cfg_lib.resolve(c, "/tmp/unused", num_devices=4, process_count=1, read_files=False)


def test_predicted_saves_follow_the_policy_in_force():
    from mypt_jax.preflight import phase_estimate

    state_bytes = phase_estimate.save_time(_gamma(), 600.0)["state_bytes"]
    copy_s, write_s = state_bytes / 10e9, state_bytes / 1e9
    # The upstream's cadence: a save at each eval before the end (steps 0, 100, ..., 2400)
    # plus the final one. 600 s of steps between 26 saves cover ~23 s each, more than an 8 s
    # write: each blocks for its copy only.
    upstream = phase_estimate.save_time(
        _gamma(checkpoint_at_eval=True, checkpoint_minutes=0.0), 600.0)
    assert upstream["saves_by_trigger"] == {"final": 1, "eval": 25}
    assert upstream["save_blocking_s"] == pytest.approx(copy_s, rel=1e-3)
    assert upstream["save_total_blocking_s"] == pytest.approx(25 * copy_s + copy_s + write_s,
                                                              rel=1e-3)
    # 60 s of steps between them cover ~2 s of the write: the loop waits for the rest.
    tight = phase_estimate.save_time(
        _gamma(checkpoint_at_eval=True, checkpoint_minutes=0.0), 60.0)
    assert copy_s < tight["save_blocking_s"] < copy_s + write_s
    # Time saves: 3 hours at 15 minutes = 12; permanent ones every 1000 of 2500 steps = 2.
    timed = phase_estimate.save_time(_gamma(checkpoint_interval=1000), 3 * 3600.0)
    assert timed["saves_by_trigger"] == {"final": 1, "interval": 2, "time": 12}
    assert timed["saves"] == 15
    # On CPU saves are synchronous: each blocks its whole write.
    sync = phase_estimate.save_time(_gamma(), 600.0, accelerator=False)
    assert not sync["save_async"] and sync["save_total_blocking_s"] == pytest.approx(
        copy_s + write_s, rel=1e-3)


def test_compile_wall_clock_is_the_longest_first_makespan():
    from mypt_jax.preflight import curriculum

    assert curriculum.makespan([], 4) == 0.0
    assert curriculum.makespan([10, 9, 8, 1], 1) == 28
    assert curriculum.makespan([10, 9, 8, 1], 2) == 17  # 10+1 | 9+8
    assert curriculum.makespan([10, 9, 8, 1], 8) == 10


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
    for key in ("compile_wall_s", "train_s", "eval_s", "save_s", "total_s"):
        assert report["total"][key] == pytest.approx(first[key] + second[key], rel=1e-3)
    assert first["train_s"] > 0 and first["eval_s"] > 0
    assert second["max_iters"] == 20 and second["train_s"] < first["train_s"]
    # Four data-parallel chips all-reduce the gradients: the roofline counts the link time.
    train = next(p for p in report["programs"] if p["kind"] == "train")
    assert train["hbm"]["collective"] > 0 and train["roofline"]["collective_s"] > 0
    assert "four-phase wall-clock" in proc.stdout


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
                        "--mix_batches", "0")
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
