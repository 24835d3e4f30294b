"""Earlier phases' train splits replayed in a later phase's mix: a preset's cure for forgetting.

Each phase watches the val split of every earlier phase (`eval_sets`), and a loss that rose more
than `forgetting_factor` times is a red line. The seed's mixes replay whole files, so the watch
cannot be honest with them: β's mix holds all of α's records, its val split too, and γ and 3a-2
hold all of β's echo records. A small model also overwrites what is not replayed at all (the
CPU preset on the seed's mixes: α's val loss x15 during γ, from a baseline β had trained on;
γ's x42 during 3a-2, which does not replay γ).

A preset may therefore name, per phase, earlier phases to replay with a ratio
(`configs/pipeline_cpu.py` REPLAY). They take the place of the seed's replay inputs: the phase
mixes its own dataset and those earlier phases' *train* splits, the records of each one's
prepare input that Step 2 put in `train/` (found again from its `dataset_metadata.json`:
source file, seed, val_split, with prepare's own split rule), written to
`data/sft_replay/phase<name>_train.jsonl`. No val record of an earlier phase is trained on
again. The ratio has `datagen.mix`'s `path:RATIO` meaning (3 = three copies, 0.25 = a quarter);
with `--replay_share` the share sizes them instead. The real preset keeps the seed's mixes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mypt_jax.curriculum.phases import (
    PHASES,
    Phase,
    PipelineError,
    earlier_phases,
    preset_replay,
)

REPLAY_DIR = "data/sft_replay"


def plan(preset: str, phase: Phase) -> list[tuple[str, float]]:
    """The (earlier phase, ratio) pairs the preset replays in this phase's mix, checked."""
    table, earlier = preset_replay(preset, phase.name), earlier_phases(phase)
    where = f"configs/pipeline_{preset}.py REPLAY[{phase.name!r}]"
    if table and not phase.mix_output:
        raise PipelineError(f"{where}: {phase.name} has no mix to replay into")
    for name, ratio in table.items():
        if name not in earlier:
            raise PipelineError(f"{where}: {name!r} is not an earlier phase (expected one of "
                                f"{earlier})")
        if not (isinstance(ratio, int | float) and ratio > 0):
            raise PipelineError(f"{where}[{name!r}]: expected a ratio > 0, got {ratio!r}")
    return [(name, float(ratio)) for name, ratio in table.items()]


def mixed_datasets(phase: Phase, replays: Sequence[tuple[str, float]]) -> tuple[str, ...]:
    """The generated datasets (GENERATED keys) a phase mixes: its own and the seed's replays,
    or its own alone when the preset replays earlier train splits instead."""
    return phase.datasets[:1] if replays else phase.datasets


def metadata_path(root: Path, name: str) -> Path:
    """Where phase `name`'s prepared dataset says how Step 2 split it."""
    from mypt_jax.data import episodes

    return root / PHASES[name].prepared / episodes.METADATA_FILE


def train_split_path(root: Path, name: str) -> Path:
    return root / REPLAY_DIR / f"phase{name}_train.jsonl"


def write_train_split(root: Path, name: str) -> tuple[Path, int, bool]:
    """Writes phase `name`'s train-split records; (path, records, whether the file changed)."""
    from datagen.records import write_text_atomic
    from mypt_jax.data.prepare import split_indices

    meta_file = metadata_path(root, name)
    if not meta_file.is_file():
        raise PipelineError(f"replay of {name}: {meta_file} is missing; prepare {name} first "
                            f"(`--phase {name}`, or `--phase all`)")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    source = Path(meta["source_file"])
    # Lines as prepare reads them: \n, \r\n and \r end one (read_text's universal newlines), and
    # blank ones are not records.
    text = source.read_text(encoding="utf-8") if source.is_file() else ""
    lines = [line + "\n" for line in text.split("\n") if line.strip()]
    stale = source.is_file() and source.stat().st_mtime > meta_file.stat().st_mtime
    if stale or meta.get("skipped_invalid") or len(lines) != meta["num_conversations"]:
        raise PipelineError(
            f"replay of {name}: {meta_file} no longer describes {source} (prepared from "
            f"{meta['num_conversations']} records, skipping {meta.get('skipped_invalid', 0)}; "
            f"the file holds {len(lines)}{', changed since' if stale else ''}); prepare {name} again")
    train_N, _ = split_indices(len(lines), meta["val_split"], meta["seed"])
    kept = "".join(lines[i] for i in train_N)
    path = train_split_path(root, name)
    changed = not (path.is_file() and path.read_text(encoding="utf-8") == kept)
    if changed:
        write_text_atomic(path, kept)
    return path, len(train_N), changed
