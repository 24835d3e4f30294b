"""The exports come before the finished mark, whole or not at all, and a rerun of a finished run
writes any that is missing."""

from __future__ import annotations

import json
import shutil

import pytest
import train_helpers

from mypt_jax.training import exports, trainer


def _config(dataset, workdir, max_iters):
    return train_helpers.tiny_config(dataset, workdir, max_iters=max_iters, eval_interval=100,
                                     log_interval=2, eval_prompts_file="", n_layer=1, warmup_iters=0,
                                     export_upstream=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    dataset = train_helpers.make_dataset(tmp)
    trainer.train(_config(dataset, tmp / "run", 4))
    return dataset, tmp / "run"


def _step_of(model_dir) -> int:
    return json.loads((model_dir / "source.json").read_text())["step"]


def test_a_rerun_of_a_finished_run_writes_a_missing_export(finished, tmp_path, capsys):
    dataset, base = finished
    run = tmp_path / "run"
    shutil.copytree(base, run)
    shutil.rmtree(run / "model")
    summary = trainer.train(_config(dataset, run, 4))
    assert summary["already_finished"] and summary["model_dir"] == str(run / "model")
    assert "finished at step 4; writing the missing model_dir" in capsys.readouterr().out
    assert _step_of(run / "model") == 4 and (run / "upstream" / "model.pt").is_file()
    assert trainer.train(_config(dataset, run, 4))["already_finished"]
    assert "finished at step 4; nothing to do" in capsys.readouterr().out


def test_a_failed_export_keeps_the_old_one_and_the_run_unfinished(finished, tmp_path,
                                                                   monkeypatch):
    dataset, base = finished
    run = tmp_path / "run"
    shutil.copytree(base, run)
    write = exports._write_model_dir

    def fail_midway(r, host, step, dst):
        write(r, host, step, dst)
        raise OSError("the disk went away")

    monkeypatch.setattr(exports, "_write_model_dir", fail_midway)
    with pytest.raises(OSError, match="the disk went away"):
        trainer.train(_config(dataset, run, 6))
    assert _step_of(run / "model") == 4  # the old export, whole
    assert not (run / "checkpoints" / "6").exists()  # not marked finished
    monkeypatch.setattr(exports, "_write_model_dir", write)
    summary = trainer.train(_config(dataset, run, 6))
    assert not summary.get("already_finished") and _step_of(run / "model") == 6
    assert not [p.name for p in run.iterdir() if p.name.startswith(".model")]  # no leftovers
