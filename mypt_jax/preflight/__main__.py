"""`python -m mypt_jax.preflight ...`: see mypt_jax/preflight/report.py."""

from mypt_jax.parallel import stack
from mypt_jax.preflight.report import main

stack.unlimited_for_tpu_compiles()
raise SystemExit(main())
