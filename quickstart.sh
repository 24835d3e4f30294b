#!/usr/bin/env bash
# The README's first command. On a fresh clone (CPU only, no base checkpoint): install into
# .venv, then run Phase 3a-1 alpha end to end on a tiny model trained from scratch (generate,
# prepare, train, test prompts) and print the seed's alpha test prompts with the answers.
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
exec .venv/bin/python -m mypt_jax.pipeline --phase 3a1_alpha --preset cpu "$@"
