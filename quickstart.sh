#!/usr/bin/env bash
# The README's first command. On a fresh clone (CPU only, no base checkpoint): install into
# .venv, then run Phase 3a-1 alpha end to end on a tiny model trained from scratch (generate,
# prepare, train, test prompts), print the seed's alpha test prompts with the answers, then
# the Step 4 commands (docs/pipeline.md) pointed at the model just trained, ready to paste.
# Extra arguments go to the pipeline (e.g. --root /tmp/qs). Rerunning skips finished steps.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "quickstart: needs Python >= 3.11 as python3 (or set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Install once, and again whenever pyproject.toml changes.
stamp=.venv/.mypt_quickstart_installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e .
  touch "$stamp"
fi

# CPU on purpose: the quickstart is sized for two CPU cores, and this skips the accelerator probe.
export JAX_PLATFORMS=cpu
.venv/bin/python -m mypt_jax.pipeline --phase 3a1_alpha --preset cpu "$@"

# Where the pipeline put the model, asked of the pipeline itself (--root moves it).
model=$(.venv/bin/python - "$@" <<'PY'
import sys
from pathlib import Path

from mypt_jax.curriculum import pipeline
from mypt_jax.interop import model_io

args = pipeline.build_parser().parse_args(["--phase", "3a1_alpha", *sys.argv[1:]])
config = pipeline.phase_config(Path(args.root), pipeline.PHASES["3a1_alpha"], "cpu", None, {})
print(Path(config.workdir) / model_io.RUN_MODEL_DIR)
PY
)
system="<myPT_system>You are MyPT. Be concise: 1-2 sentences. Follow instructions exactly.</myPT_system>"
cat <<EOF

Step 4 on this model (paste from $PWD):
.venv/bin/python -m mypt_jax.generate --model $model --temperature 0 \\
    --prompt "$system<myPT_user>Say hello.</myPT_user><myPT_assistant>"
.venv/bin/python -m mypt_jax.evaluate --model $model \\
    --eval_prompts_file configs/sft_eval/phase3a1_alpha_test_prompts.json
EOF
