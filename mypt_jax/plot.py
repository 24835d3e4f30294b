"""`python -m mypt_jax.plot`: the command line of `mypt_jax.training.plot`."""

import sys

from mypt_jax.training.plot import main

if __name__ == "__main__":
    sys.exit(main())
