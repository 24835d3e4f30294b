"""The shape plans of the four Phase 3a phases: exact shapes, planned programs, extra positions.

    python -m mypt_jax.pipeline --phase all --steps generate,mix,prepare --root DIR
    python benchmarks/shape_plans.py --root DIR [--platform tpu --devices 4] [--pack]

For each phase config (block 512, batch 16, its epoch seed) the whole run's batch stream is
read from its prepared dataset under `--root` and planned as `mypt_jax.train` plans it on
its first run on `--devices` devices of `--platform` (`shape_plan.Cost.prior`; pass
`--compile_s` to cost a compile otherwise). Prints JSON: per phase, the exact shapes with
their batch counts, the programs, the extra computed positions; and the distinct programs
of all four phases together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mypt_jax.curriculum.phases import PHASES as CURRICULUM  # noqa: E402
from mypt_jax.data import batching  # noqa: E402
from mypt_jax.data import inspect as data_inspect  # noqa: E402
from mypt_jax.data import loader as data  # noqa: E402
from mypt_jax.training.compilation import compile_cache, compile_plan, shape_plan  # noqa: E402
from mypt_jax.training.setup import config as cfg_lib  # noqa: E402

# Each phase's preset file, from the curriculum's one table.
PHASES = {name: f"configs/{p.config}.py" for name, p in CURRICULUM.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the pipeline root holding data/sft_ready/")
    p.add_argument("--platform", default="tpu", choices=sorted(shape_plan.PRIOR_COMPILE_S))
    p.add_argument("--devices", type=int, default=4, help="accelerators (a v5p-8 has 4)")
    p.add_argument("--compile_s", type=float, default=0.0, help="a compile's seconds (0: prior)")
    p.add_argument("--pack", action="store_true", help="pack_episodes=True")
    args = p.parse_args(argv)
    cost = compile_plan.cost_for(compile_cache.Timings("", ""), args.devices, args.platform)
    if args.compile_s:
        cost = dataclasses.replace(cost, compile_s=args.compile_s)
    out = {"platform": args.platform, "devices": args.devices, "pack": args.pack,
           "cost": dataclasses.asdict(cost), "phases": {}}
    distinct: set[str] = set()
    for phase, path in PHASES.items():
        c = data_inspect.load_config(str(ROOT / path))
        c.dataset_dir = str(Path(args.root) / c.dataset_dir)
        c.pack_episodes = args.pack
        mc = cfg_lib.model_config(c)
        source = data.make_source(c.dataset_dir, "train", row_stats=True, process_index=0,
                                  process_count=1, **data_inspect.iterator_kwargs(c))
        counts = shape_plan.count_shapes(source, batching.layout_from_config(c),
                                         range(c.max_iters))
        plan = shape_plan.plan(counts, lambda s, mc=mc: shape_plan.step_flops(mc, s)
                               / cost.flops_per_s, cost.compile_s)
        distinct |= {str(s) for s in plan.programs}
        out["phases"][phase] = {
            "batches": c.max_iters,
            "exact": {str(s): n for s, n in sorted(counts.items(), key=lambda kv: -kv[1])},
            **plan.to_dict()}
    out["distinct_programs"] = sorted(distinct)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
