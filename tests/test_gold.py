"""GOLD selection (evals/gold.py) and the external gate runner (evals/gate.py): the guards at
their boundaries, each strategy, the state's round trip, and real gate scripts."""

from __future__ import annotations

import json
import math
import sys

import ml_collections
import pytest

from mypt_jax.training.evals import gate, gold


def _cfg(**over) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        gold_selection="val_loss", gold_loss_guards=True, gold_overfit_ratio=5.0,
        gold_consecutive_rises=2, gold_eval_regression=0.2, gold_gate_script="",
        gold_gate_args=(), gold_gate_timeout_s=1200, gold_gate_interval_evals=1,
        gold_gate_on_final=True, gold_gate_metric_path="", gold_gate_metric_goal="max",
        gold_gate_pass_path="gate_passed", gold_gate_require_pass=False, gold_gate_strict=False,
        gold_gate_python="", gold_gate_cwd=""))
    c.update(over)
    return c


def _decide(c, st, step, val, *, train=1.0, sets=None, gate_result=None):
    return gold.decide(c, st, step=step, val_loss=val, train_loss=train, set_losses=sets or {},
                       gate=gate_result)


def _events(c, vals, **kw):
    st = gold.GoldState()
    return st, [_decide(c, st, 100 * (i + 1), v, **kw)["event"] for i, v in enumerate(vals)]


# ----------------------------------------------------------------------------- loss guards


def test_overfit_guard_fires_above_the_ratio_only():
    c = _cfg()
    at = _decide(c, gold.GoldState(), 100, 5.0, train=1.0)  # 5.0 / 1.0 == ratio: allowed
    assert at["event"] == "gold_checkpoint" and at["selected"] is True
    over = _decide(c, gold.GoldState(), 100, 5.01, train=1.0)
    assert over["event"] == "gold_blocked" and over["selected"] is False
    assert over["reason"] == "overfit (val/train=5.0x, threshold=5.0x)"
    assert over["best_gold_val_loss"] is None  # nothing selected yet
    # a train loss at or below 1e-6 is not divided by
    assert _decide(c, gold.GoldState(), 100, 1.0, train=1e-6)["event"] == "gold_checkpoint"
    assert _decide(c, gold.GoldState(), 100, 1.0, train=0.0)["event"] == "gold_checkpoint"
    off = _cfg(gold_loss_guards=False)
    assert _decide(off, gold.GoldState(), 100, 50.0, train=1.0)["event"] == "gold_checkpoint"


def test_rises_are_counted_back_from_the_eval_before_the_last():
    assert gold.rises_before_last([3.0, 2.0, 2.5, 2.8, 2.6]) == 2  # 2.0<2.5<2.8, then 3.0>2.0
    assert gold.rises_before_last([3.0, 2.0, 2.5, 2.4]) == 1
    assert gold.rises_before_last([1.0, 2.0, 3.0, 4.0]) == 2  # the last rise is not counted
    assert gold.rises_before_last([2.0, 2.0, 2.0]) == 0  # equal is no rise
    assert gold.rises_before_last([5.0, 4.0]) == 0
    assert gold.rises_before_last([]) == 0


def test_flapping_guard_blocks_a_dip_after_enough_rises():
    vals = [3.0, 2.0, 2.5, 2.8, 1.9]  # 1.9 would be a new best, but 2 rises came before it
    st, events = _events(_cfg(), vals)
    assert events == ["gold_checkpoint", "gold_checkpoint", "gold_kept", "gold_kept",
                      "gold_blocked"]
    assert st.gold_step == 200 and st.best_gold_val_loss == 2.0 and st.best_val_loss == 1.9
    rec = _decide(_cfg(), gold.GoldState(val_history=[3.0, 2.0, 2.5, 2.8]), 500, 1.9)
    assert rec["reason"] == "flapping (val loss rose 2 consecutive evals before this one)"
    _, events = _events(_cfg(gold_consecutive_rises=3), vals)
    assert events[-1] == "gold_checkpoint"
    # two evals of history are too few to judge, however low the threshold
    _, events = _events(_cfg(gold_consecutive_rises=0), [3.0, 2.0])
    assert events == ["gold_checkpoint", "gold_checkpoint"]


def test_eval_regression_against_the_first_evals_set_losses():
    c = _cfg(gold_eval_regression=0.25)
    st = gold.GoldState()
    assert _decide(c, st, 100, 3.0, sets={})["event"] == "gold_checkpoint"
    assert st.baselines == {}  # the first eval with sets sets the baselines
    assert _decide(c, st, 200, 2.9, sets={"a": 4.0, "b": 0.0})["event"] == "gold_checkpoint"
    assert st.baselines == {"a": 4.0, "b": 0.0}
    # (5.0 - 4.0) / 4.0 == 0.25: at the threshold; b's baseline 0 and the new set c are skipped
    assert _decide(c, st, 300, 2.8, sets={"a": 5.0, "b": 9.0, "c": 9.0})["event"] == (
        "gold_checkpoint")
    rec = _decide(c, st, 400, 2.7, sets={"a": 5.0625, "b": 0.0})
    assert rec["event"] == "gold_blocked"
    assert rec["reason"] == "eval regression: a 4.0000->5.0625 (+26.6%, threshold=25%)"
    assert st.baselines == {"a": 4.0, "b": 0.0} and st.gold_step == 300


# ----------------------------------------------------------------------------- strategies

GATED = dict(gold_gate_script="gate.py")
FAILED_RUN = {"ran": True, "ok": False, "returncode": 3, "gate_pass": True, "metric_value": None}


def test_strict_gate_failure_blocks():
    rec = _decide(_cfg(gold_gate_strict=True, **GATED), gold.GoldState(), 100, 2.0,
                  gate_result=FAILED_RUN)
    assert rec["event"] == "gold_blocked"
    assert rec["reason"] == "external gate execution failed (strict): rc=3"
    lax = _decide(_cfg(**GATED), gold.GoldState(), 100, 2.0, gate_result=FAILED_RUN)
    assert lax["event"] == "gold_checkpoint"
    no_run = _decide(_cfg(gold_gate_strict=True, **GATED), gold.GoldState(), 100, 2.0)
    assert no_run["event"] == "gold_checkpoint"


def test_val_loss_strategy_with_and_without_require_pass():
    _, events = _events(_cfg(), [3.0, 2.0, 2.5])
    assert events == ["gold_checkpoint", "gold_checkpoint", "gold_kept"]
    need = _cfg(gold_gate_require_pass=True, **GATED)
    fail = {"ran": True, "ok": True, "gate_pass": False}
    assert _decide(need, gold.GoldState(), 100, 2.0, gate_result=fail)["reason"] == (
        "external gate required pass but gate did not pass")
    assert _decide(need, gold.GoldState(), 100, 2.0)["event"] == "gold_blocked"  # gate not run
    ok = {"ran": True, "ok": True, "gate_pass": True}
    assert _decide(need, gold.GoldState(), 100, 2.0, gate_result=ok)["event"] == "gold_checkpoint"
    # require_pass without a gate script: nothing to require
    no_gate = _cfg(gold_gate_require_pass=True)
    assert _decide(no_gate, gold.GoldState(), 100, 2.0)["event"] == "gold_checkpoint"


def test_hybrid_needs_a_pass_then_a_lower_val_loss():
    c = _cfg(gold_selection="hybrid", **GATED)
    st = gold.GoldState()
    passed, failed = {"ran": True, "ok": True, "gate_pass": True}, {"ran": True, "gate_pass": False}
    rec = _decide(c, st, 100, 2.0, gate_result=failed)
    assert rec["event"] == "gold_blocked" and rec["reason"] == "hybrid strategy requires gate pass"
    assert _decide(c, st, 200, 3.0, gate_result=passed)["event"] == "gold_checkpoint"
    assert _decide(c, st, 300, 3.5, gate_result=passed)["event"] == "gold_kept"
    assert st.gold_step == 200 and st.best_gold_val_loss == 3.0 and st.best_val_loss == 2.0


def _metric_gate(metric, passed=True):
    return {"ran": True, "ok": True, "gate_pass": passed, "metric_value": metric}


def test_external_gate_max_metric_with_ties_broken_by_val_loss():
    c = _cfg(gold_selection="external_gate", gold_loss_guards=False, **GATED)
    st = gold.GoldState()
    steps = [(0.5, 2.0, "gold_checkpoint"),  # first metric
             (0.4, 1.0, "gold_kept"),  # worse metric, however low the val loss
             (0.5, 1.5, "gold_checkpoint"),  # tie, lower val loss
             (0.5, 1.8, "gold_kept"),  # tie, higher val loss
             (0.6, 3.0, "gold_checkpoint")]  # better metric, however high the val loss
    for i, (metric, val, event) in enumerate(steps):
        rec = _decide(c, st, 100 * (i + 1), val, gate_result=_metric_gate(metric))
        assert rec["event"] == event, (i, rec)
    assert (st.gold_step, st.best_gold_val_loss, st.best_gate_metric) == (500, 3.0, 0.6)
    assert rec["best_gate_metric"] == 0.6 and rec["gate_metric"] == 0.6 and rec["gate_pass"]


def test_external_gate_min_metric_and_a_failed_pass():
    c = _cfg(gold_selection="external_gate", gold_gate_metric_goal="min",
             gold_loss_guards=False, **GATED)
    st = gold.GoldState()
    events = [_decide(c, st, 100 * (i + 1), 2.0, gate_result=_metric_gate(m))["event"]
              for i, m in enumerate([0.5, 0.6, 0.4])]
    assert events == ["gold_checkpoint", "gold_kept", "gold_checkpoint"]
    assert st.best_gate_metric == 0.4 and st.gold_step == 300
    # without require_pass a better metric wins even when the gate did not pass (as upstream)
    assert _decide(c, st, 400, 2.0, gate_result=_metric_gate(0.3, passed=False))["selected"]
    need = _cfg(gold_selection="external_gate", gold_gate_require_pass=True, **GATED)
    rec = _decide(need, gold.GoldState(), 100, 2.0, gate_result=_metric_gate(0.3, passed=False))
    assert rec["reason"] == "external_gate strategy requires gate pass"


def test_external_gate_without_a_metric_needs_a_pass_and_a_lower_val_loss():
    c = _cfg(gold_selection="external_gate", gold_loss_guards=False, **GATED)
    st = gold.GoldState()
    assert _decide(c, st, 100, 2.0, gate_result=_metric_gate(None, False))["event"] == "gold_kept"
    assert _decide(c, st, 200, 2.0, gate_result=_metric_gate(None))["event"] == "gold_checkpoint"
    assert _decide(c, st, 300, 2.5, gate_result=_metric_gate(None))["event"] == "gold_kept"
    assert _decide(c, st, 400, 1.5)["event"] == "gold_kept"  # the gate did not run here
    assert st.gold_step == 200 and st.best_gate_metric is None


def test_decide_refuses_selection_off():
    with pytest.raises(ValueError, match="^gold_selection: '' selects nothing"):
        _decide(_cfg(gold_selection=""), gold.GoldState(), 100, 2.0)


# ----------------------------------------------------------------------------- state


def test_state_round_trips_through_json_including_infinities():
    fresh = gold.GoldState()
    d = json.loads(json.dumps(fresh.to_dict(), allow_nan=False))
    assert d["best_val_loss"] is None and d["best_gold_val_loss"] is None
    assert gold.GoldState.from_dict(d) == fresh
    assert gold.GoldState.from_dict(d).best_gold_val_loss == math.inf
    st = gold.GoldState(best_val_loss=1.5, best_gold_val_loss=1.75, best_gate_metric=0.25,
                        gold_step=300, val_history=[2.0, math.inf, 1.5],
                        baselines={"a": 4.0}, eval_count=3, last_step=300)
    d = json.loads(json.dumps(st.to_dict(), allow_nan=False))
    assert d["val_history"] == [2.0, None, 1.5]
    assert gold.GoldState.from_dict(d) == st


def test_gold_dir_and_state_file_payload():
    assert gold.gold_dir("/runs/sft1/") == "/runs/sft1_gold"
    assert gold.gold_dir("gs://bucket/runs/sft1") == "gs://bucket/runs/sft1_gold"
    for bad in ("", "/", "gs://", "gs://bucket/"):
        with pytest.raises(ValueError, match="^workdir: "):
            gold.gold_dir(bad)
    c = _cfg(gold_selection="hybrid", gold_gate_metric_path="m", **GATED)
    st = gold.GoldState(best_val_loss=1.5, gold_step=200, last_step=300)
    p = gold.state_file_payload(c, st, {"ran": True, "ok": True, "gate_pass": True,
                                        "stdout_tail": "x" * 100, "returncode": 0})
    assert p["strategy"] == "hybrid" and p["iter"] == 300 and p["gold_step"] == 200
    assert p["best_val_loss"] == 1.5 and p["best_gold_val_loss"] is None
    assert p["external_gate"] == {"enabled": True, "script": "gate.py", "metric_path": "m",
                                  "metric_goal": "max", "pass_path": "gate_passed",
                                  "require_pass": False, "strict": False}
    assert p["last_gate"] == {"ran": True, "ok": True, "returncode": 0, "gate_pass": True,
                              "metric_value": None, "metric_path": None, "output_json": None,
                              "error": None}
    assert gold.state_file_payload(c, st, None)["last_gate"]["ran"] is False


# ----------------------------------------------------------------------------- the gate


def _script(tmp_path, body: str, name: str = "gate_script.py") -> str:
    path = tmp_path / name
    path.write_text("import json, os, sys, time\nargs = sys.argv[1:]\n" + body)
    return str(path)


WRITES_VERDICT = """
out = args[args.index("--output") + 1]
with open(out, "w") as f:
    json.dump({"gate_passed": True, "scores": {"acc": "0.75"}, "argv": args,
               "cwd": os.getcwd()}, f)
print("scored")
"""


def test_run_reads_the_verdict_and_appends_output(tmp_path):
    c = _cfg(gold_gate_script=_script(tmp_path, WRITES_VERDICT),
             gold_gate_args=("--model", "{model_name}"), gold_gate_metric_path="scores.acc")
    out = str(tmp_path / "gold_gate_step_200.json")
    r = gate.run(c, "m1", out)
    assert (r["ran"], r["ok"], r["returncode"], r["gate_pass"]) == (True, True, 0, True)
    assert r["metric_value"] == 0.75 and r["metric_path"] == "scores.acc" and r["error"] is None
    assert r["output_json"] == out and r["stdout_tail"] == "scored\n" and r["stderr_tail"] == ""
    assert 0 < r["seconds"] < 30
    with open(out) as f:
        assert json.load(f)["argv"] == ["--model", "m1", "--output", out]


def test_command_substitutes_placeholders_without_appending(tmp_path):
    c = _cfg(gold_gate_script=_script(tmp_path, ""),
             gold_gate_args=("--out={output_json}", "{model_name}", "x{model_name}y"))
    argv = gate.command(c, "m", "/o/v.json")
    assert argv == [sys.executable, str(tmp_path / "gate_script.py"), "--out=/o/v.json", "m",
                    "xmy"]
    assert gate.output_path("/w", 300, False) == "/w/gold_gate_step_300.json"
    assert gate.output_path("/w", 300, True) == "/w/gold_gate_final.json"


def test_run_without_json_falls_back_to_the_exit_status(tmp_path):
    out = tmp_path / "v.json"
    out.write_text('{"gate_passed": true}')  # an earlier attempt's verdict: must not count
    c = _cfg(gold_gate_script=_script(tmp_path, "sys.stderr.write('bad')\nsys.exit(1)\n"),
             gold_gate_metric_path="acc")
    r = gate.run(c, "m", str(out))
    assert (r["ok"], r["returncode"], r["gate_pass"], r["metric_value"]) == (False, 1, False, None)
    assert r["error"] == "exited with status 1" and r["stderr_tail"] == "bad"
    assert not out.exists()
    ok = _cfg(gold_gate_script=_script(tmp_path, "pass\n", "ok.py"))
    assert gate.run(ok, "m", str(out))["gate_pass"] is True
    says_no = _script(tmp_path, "json.dump({'gate_passed': False}, open(args[-1], 'w'))\n", "n.py")
    r = gate.run(_cfg(gold_gate_script=says_no), "m", str(out))
    assert (r["ok"], r["gate_pass"]) == (True, False)


SLEEPS_WITH_A_CHILD = """
import subprocess
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # holds our pipes
print("start", flush=True)
time.sleep(30)
"""


def test_run_times_out_as_a_result(tmp_path):
    """The script and the child it started are ended at the timeout, not 30 s later."""
    c = _cfg(gold_gate_script=_script(tmp_path, SLEEPS_WITH_A_CHILD), gold_gate_timeout_s=1)
    r = gate.run(c, "m", str(tmp_path / "v.json"))
    assert (r["ran"], r["ok"], r["returncode"], r["gate_pass"]) == (True, False, None, False)
    assert r["error"] == "timed out after 1 s (gold_gate_timeout_s)"
    assert r["stdout_tail"] == "start\n"
    assert 1 <= r["seconds"] < 10


def test_relative_script_runs_in_the_gate_cwd(tmp_path):
    folder = tmp_path / "gates"
    folder.mkdir()
    _script(folder, WRITES_VERDICT, "g.py")
    c = _cfg(gold_gate_script="g.py", gold_gate_cwd=str(folder))
    gate.check(c)
    r = gate.run(c, "m", str(tmp_path / "v.json"))
    assert r["ok"] and json.loads((tmp_path / "v.json").read_text())["cwd"] == str(folder)
    line = gate.describe(c, "/w")
    assert f"{folder / 'g.py'} --output '{{output_json}}'" in line
    assert f"cwd {folder} | python {sys.executable}" in line
    assert "/w/gold_gate_step_<step>.json" in line and "at the final eval" in line
    assert gate.describe(_cfg(), "/w") == "GOLD gate: off (gold_selection='val_loss')"


def test_due_every_n_evals_and_at_the_final_one():
    c = _cfg(gold_gate_script="g.py", gold_gate_interval_evals=2)
    assert [gate.due(c, n, False) for n in (1, 2, 3, 4)] == [False, True, False, True]
    assert gate.due(c, 3, True) is True
    assert gate.due(_cfg(gold_gate_script="g.py", gold_gate_on_final=False), 2, True) is False
    assert gate.due(_cfg(), 1, False) is False and gate.due(_cfg(), 1, True) is False


def test_deep_get():
    obj = {"a": {"b": {"c": 3}}, "x": 0}
    assert gate.deep_get(obj, "a.b.c") == 3 and gate.deep_get(obj, "x", 9) == 0
    assert gate.deep_get(obj, "a.z", 9) == 9 and gate.deep_get(obj, "x.y", 9) == 9


def test_check_names_the_field(tmp_path):
    script = _script(tmp_path, "")
    not_exec = tmp_path / "python"
    not_exec.write_text("")
    cases = [
        (dict(gold_selection="loss"), "^gold_selection: unknown strategy 'loss'"),
        (dict(gold_selection="hybrid"), "^gold_selection: 'hybrid' never selects a GOLD"),
        (dict(gold_selection="external_gate"), "^gold_selection: 'external_gate' never"),
        (dict(gold_selection="", gold_gate_script=script), "^gold_gate_script: .* is set but"),
        (dict(gold_gate_script=str(tmp_path / "nope.py")),
         f"^gold_gate_script: {tmp_path}/nope.py does not exist \\(relative paths"),
        (dict(gold_gate_script=script, gold_gate_cwd=str(tmp_path / "no")), "^gold_gate_cwd: "),
        (dict(gold_gate_script=script, gold_gate_python=str(tmp_path / "py")),
         "^gold_gate_python: .* is not an executable file"),
        (dict(gold_gate_script=script, gold_gate_python=str(not_exec)), "^gold_gate_python: "),
        (dict(gold_gate_script=script, gold_gate_python="no-such-python-xyz"),
         "^gold_gate_python: "),
        (dict(gold_gate_metric_goal="maximize"), "^gold_gate_metric_goal: expected 'max'"),
        (dict(gold_gate_timeout_s=0), "^gold_gate_timeout_s: must be >= 1, got 0"),
        (dict(gold_gate_interval_evals=0), "^gold_gate_interval_evals: must be >= 1"),
        (dict(gold_gate_args=("--a", 3)), "^gold_gate_args: expected a tuple of strings"),
    ]
    for over, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            gate.check(_cfg(**over))
    for ok in (dict(), dict(gold_selection=""), dict(gold_selection="hybrid", gold_gate_script=script),
               dict(gold_gate_script=script, gold_gate_python="python3")):
        assert gate.check(_cfg(**ok)) is None
