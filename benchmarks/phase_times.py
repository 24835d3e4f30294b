"""Predicted wall-clock of every Phase 3a phase from one preflight report, padded and padding-free.

    python -m mypt_jax.pipeline --phase all --steps generate,mix,prepare --root DIR
    python -m mypt_jax.preflight --config=configs/phase3a1_gamma.py --topology v5p-8 \\
        --programs train --json v5p8.json [--config.mesh_data=1 --config.mesh_fsdp=-1]
    python benchmarks/phase_times.py --report v5p8.json --root DIR

The four phases share the model, the batch and the mesh, so one report's compiled train
steps serve all of them; each phase's mix of batch shapes comes from its own prepared
dataset under `--root`, its step and eval counts from its config (`phase_estimate.phase_time`
states the prediction). Evals count only where the report compiled them. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mypt_jax.curriculum.phases import PHASES as CURRICULUM  # noqa: E402
from mypt_jax.data import batching  # noqa: E402
from mypt_jax.data import inspect as data_inspect  # noqa: E402
from mypt_jax.preflight import chips, phase_estimate  # noqa: E402
from mypt_jax.preflight import report as preflight  # noqa: E402

# Each phase's preset file, from the curriculum's one table.
PHASES = {name: f"configs/{p.config}.py" for name, p in CURRICULUM.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", required=True, help="a preflight --json report")
    p.add_argument("--root", required=True, help="the pipeline root holding data/sft_ready/")
    p.add_argument("--batches", type=int, default=500, help="train batches read per phase")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    t = report["target"]
    target = preflight.Target(t["name"], [None] * t["devices"], t["hosts"],
                              chips.CHIPS[t["chip"]["name"]], t["capacity_per_device"], None)
    out = {"report": args.report, "target": t["name"], "mesh": report["mesh"], "phases": {}}
    for phase, path in PHASES.items():
        c = data_inspect.load_config(str(ROOT / path))
        c.dataset_dir = str(Path(args.root) / c.dataset_dir)
        c.mesh_data, c.mesh_fsdp, c.mesh_tensor = (report["mesh"][k] for k in ("data", "fsdp", "tensor"))
        c.remat, c.batch_size = report["model"]["remat"], report["batch_size"]
        c.grad_accum_steps = report["grad_accum_steps"]
        r = preflight.resolve_for(c, target)
        layout = batching.layout_from_config(
            r.config, data_shards=c.mesh_data * c.mesh_fsdp, process_count=target.hosts)
        mix = phase_estimate.bucket_mix(r, layout, args.batches)
        out["phases"][phase] = phase_estimate.phase_time(r, target.chip, len(target.devices),
                                                         report["programs"], mix)
    print(json.dumps(preflight.rounded(out), indent=2))


if __name__ == "__main__":
    main()
