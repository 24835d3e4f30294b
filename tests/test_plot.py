"""Training curves: a run's log drawn by matplotlib, several runs overlaid, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mypt_jax import plot as plot_cli
from mypt_jax.training.observe import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_log(path: Path, scale: float = 1.0) -> Path:
    """A log as the trainer writes it: train lines, evals with scores, a resume that repeats step 20."""
    scores = {"a": {"exact": True, "normalized": True}, "b": {"exact": False, "normalized": True},
              "free": {"exact": None, "normalized": None}}
    records = [{"iter": 0, "event": "start", "resumed": False},
               {"iter": 0, "val_loss": 10.0 * scale, "gen_scores": scores}]
    records += [{"iter": s, "train_loss": 10.0 * scale / (1 + s), "lr": 1e-3 * min(1, s / 10)}
                for s in (9, 19, 29, 39)]
    records += [{"iter": 20, "val_loss": 5.0 * scale},
                {"iter": 20, "event": "start", "resumed": True},
                {"iter": 20, "val_loss": 4.0 * scale, "gen_scores": scores},  # the resumed eval
                {"iter": 40, "val_loss": 1.0 * scale, "final": True}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n{\"iter\": 41, \"tr")
    return path


def test_curves_read_every_series_and_keep_a_resumed_runs_latest_value(tmp_path):
    run = plot.curves(plot.read_log(_write_log(tmp_path / "log.jsonl")), "r")
    assert run.val_loss == [(0, 10.0), (20, 4.0), (40, 1.0)]
    assert [s for s, _ in run.train_loss] == [9, 19, 29, 39] and run.lr[0] == (9, 1e-3 * 0.9)
    assert run.exact == [(0, 0.5), (20, 0.5)] and run.normalized == [(0, 1.0), (20, 1.0)]
    assert run.last_step == 40


def test_run_figure_is_a_matplotlib_png_with_both_series_labelled(tmp_path):
    log = _write_log(tmp_path / "logs" / "phase.jsonl")
    png = plot.write_run_figure(log)
    assert png == tmp_path / "logs" / "phase.loss.png"  # next to the log, as the pipeline's
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 600
        assert image.info["Software"].startswith("Matplotlib")
    assert sorted(p.name for p in png.parent.iterdir()) == ["phase.jsonl", "phase.loss.png"]

    fig = plot.figure([plot.curves(plot.read_log(log), "phase")])
    loss_ax, lr_ax, score_ax = fig.axes[:3]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert set(lines) == {"train loss", "val loss"}
    assert list(lines["val loss"].get_ydata()) == [10.0, 4.0, 1.0]
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss", "val loss"]
    assert loss_ax.get_yscale() == "log" and loss_ax.get_ylabel() == "loss (log scale)"
    assert lr_ax.get_ylabel() == "learning rate"
    assert [line.get_label() for line in lr_ax.get_lines()] == ["learning rate"]
    assert score_ax.get_xlabel() == "step"
    assert {line.get_label() for line in score_ax.get_lines()} == {"exact", "normalized"}


def test_cli_overlays_runs_and_chains_them(tmp_path, capsys):
    first = _write_log(tmp_path / "a" / "log.jsonl")  # a run workdir without checkpoints
    second = _write_log(tmp_path / "b.jsonl", scale=0.5)
    out = tmp_path / "both.png"
    assert plot_cli.main([str(first.parent), str(second), "--out", str(out), "--chain"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    fig = plot.figure([plot.curves(plot.read_log(first), "a"),
                       plot.curves(plot.read_log(second), "b")], chain=True)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()
             if not line.get_label().startswith("_")}  # not the dotted line between the runs
    assert set(lines) == {"a: train loss", "a: val loss", "b: train loss", "b: val loss"}
    assert list(lines["b: val loss"].get_xdata()) == [40, 60, 80]  # after a's last step


@pytest.mark.parametrize("content", [None, '{"iter": 0, "event": "start"}\n'])
def test_cli_names_a_run_without_a_usable_log(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    if content:
        (run / "log.jsonl").write_text(content)
    assert plot_cli.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert (f"looked for {run / 'log.jsonl'}" if content is None else "no train or val loss") in err
