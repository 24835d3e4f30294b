"""`python -m mypt_jax.pipeline`: the command line of `mypt_jax.curriculum.pipeline`."""

import sys

from mypt_jax.curriculum.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
