"""`python -m mypt_jax.data inspect ...`: see mypt_jax/data/inspect.py."""

import sys

from mypt_jax.data.inspect import main

sys.exit(main())
