"""Training curves from run logs, drawn with matplotlib (Agg, no display needed).

The figure has a loss panel (train and val loss against step, log scale), a learning-rate
panel and, where a run logged eval-prompt scores, a panel with the share of eval prompts
answered exactly and after normalising. Several runs are overlaid, one colour each;
`chain=True` places each run after the previous one on the step axis (the phases of a
pipeline, each initialised from the last). One run's figure goes next to its log as
`<log>.loss.png`. The command line is `python -m mypt_jax.plot` (mypt_jax/plot.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, FuncFormatter

DEFAULT_MANY_OUT = "runs.loss.png"


@dataclasses.dataclass(frozen=True)
class Curves:
    """One run's series, each sorted by step."""

    label: str
    train_loss: list[tuple[int, float]]
    val_loss: list[tuple[int, float]]
    lr: list[tuple[int, float]]
    exact: list[tuple[int, float]]  # share of scored eval prompts answered exactly
    normalized: list[tuple[int, float]]  # ... ignoring case, outer spaces and final .!?
    sets: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)  # eval sets

    @property
    def last_step(self) -> int:
        return max((s for series in (self.train_loss, self.val_loss) for s, _ in series), default=0)


SET_PREFIX = "val_loss/"  # an eval set's loss in the log (training/setup/eval_sets.py)


class PlotError(ValueError):
    pass


# ----------------------------------------------------------------------------- logs


def read_log(path: str | Path) -> list[dict]:
    """The JSON records of a log; a line being written (not yet valid JSON) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _shares(scores: dict) -> tuple[float, float] | None:
    scored = [s for s in scores.values() if s.get("exact") is not None]
    if not scored:
        return None
    return (sum(bool(s["exact"]) for s in scored) / len(scored),
            sum(bool(s["normalized"]) for s in scored) / len(scored))


def curves(records: Sequence[dict], label: str) -> Curves:
    """The series of one log; a resumed run's repeated steps keep the latest value."""
    series: dict[str, dict[int, float]] = {k: {} for k in ("train_loss", "val_loss", "lr",
                                                          "exact", "normalized")}
    sets: dict[str, dict[int, float]] = {}
    for r in records:
        if "iter" not in r:
            continue
        step = int(r["iter"])
        for key in ("train_loss", "val_loss", "lr"):
            if key in r:
                series[key][step] = float(r[key])
        shares = _shares(r.get("gen_scores") or {})
        if shares:
            series["exact"][step], series["normalized"][step] = shares
        for key, value in r.items():
            if key.startswith(SET_PREFIX):
                sets.setdefault(key.removeprefix(SET_PREFIX), {})[step] = float(value)
    return Curves(label, **{k: sorted(v.items()) for k, v in series.items()},
                  sets={name: sorted(v.items()) for name, v in sets.items()})


def png_beside(log_path: str | Path) -> Path:
    """`logs/train/x.jsonl` -> `logs/train/x.loss.png` (the pipeline summary's figure)."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.name.removesuffix(".jsonl") + ".loss.png")


# ----------------------------------------------------------------------------- the figure


def _xy(series: Sequence[tuple[int, float]], shift: int) -> tuple[list[int], list[float]]:
    return [step + shift for step, _ in series], [value for _, value in series]


def _minor_labels(ax) -> FuncFormatter:
    """Minor log ticks as plain numbers: all of them within about a decade, else 2x and 5x."""
    def label(value: float, _pos) -> str:
        low, high = ax.get_ylim()
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
        wide = low <= 0 or high / low > 15
        return f"{value:g}" if mantissa in ((2, 5) if wide else range(2, 10)) else ""
    return FuncFormatter(label)


def figure(runs: Sequence[Curves], chain: bool = False) -> Figure:
    """Loss (log scale), learning rate and, where logged, eval-prompt score panels."""
    with_scores = any(run.exact for run in runs)
    heights = [3, 1, 1] if with_scores else [3, 1]
    fig = Figure(figsize=(9, 2.2 * sum(heights) / 2 + 1), layout="constrained")
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    loss_ax, lr_ax = axes[0], axes[1]
    many = len(runs) > 1
    offset = 0
    set_names = sorted({name for run in runs for name in run.sets})
    labelled: set[str] = set()
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        prefix = f"{run.label}: " if many else ""
        if run.train_loss:
            loss_ax.plot(*_xy(run.train_loss, offset), color=color, lw=1.2,
                         label=f"{prefix}train loss")
        if run.val_loss:
            loss_ax.plot(*_xy(run.val_loss, offset), color=color, ls="--", marker="o", ms=3,
                         label=f"{prefix}val loss")
        for name, series in run.sets.items():
            # One colour per eval set across every run: its loss reads across the curriculum.
            j = set_names.index(name)
            loss_ax.plot(*_xy(series, offset), color=f"C{(len(runs) + j) % 10}", ls=":",
                         marker="s", ms=2.5, label=f"{name} val (eval set)" if name not in
                         labelled else None)
            labelled.add(name)
        if run.lr:
            lr_ax.plot(*_xy(run.lr, offset), color=color, label=f"{prefix}learning rate")
        if with_scores and run.exact:
            axes[2].plot(*_xy(run.exact, offset), color=color, marker="o", ms=3,
                         label=f"{prefix}exact")
            axes[2].plot(*_xy(run.normalized, offset), color=color, ls=":", marker="x", ms=3,
                         label=f"{prefix}normalized")
        if chain:
            if i:
                for ax in axes:
                    ax.axvline(offset, color="0.6", lw=0.8, ls=":")
            offset += run.last_step
    loss_ax.set_yscale("log")
    # A loss curve spans one or two decades: label some minor ticks, not only the powers of 10.
    # A loss curve spans a decade or two: label minor ticks too, as plain numbers.
    loss_ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    loss_ax.yaxis.set_minor_formatter(_minor_labels(loss_ax))
    loss_ax.set_ylabel("loss (log scale)")
    loss_ax.set_title(runs[0].label if not many else " / ".join(r.label for r in runs))
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if with_scores:
        axes[2].set_ylabel("eval prompts\npassed")
        axes[2].set_ylim(-0.05, 1.05)
    axes[-1].set_xlabel("step" + (" (runs one after another)" if chain and many else ""))
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    if not many:
        for ax in axes:
            ax.legend(loc="best", fontsize="small")
        return fig
    # Several runs: one legend of runs beside the loss panel; the other panels share its colours.
    loss_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    if with_scores:
        styles = [Line2D([], [], color="0.3", marker="o", ms=3, label="exact"),
                  Line2D([], [], color="0.3", ls=":", marker="x", ms=3, label="normalized")]
        axes[2].legend(handles=styles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Writes the figure as a PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
    return path


def write_run_figure(log_path: str | Path, out: str | Path | None = None,
                     label: str | None = None) -> Path:
    """One run's figure from its log; by default next to the log (`png_beside`)."""
    log_path = Path(log_path)
    run = curves(read_log(log_path), label or log_path.name.removesuffix(".jsonl"))
    return save(figure([run]), out or png_beside(log_path))
