"""`python -m mypt_jax.prepare`: the command line of `mypt_jax.data.prepare`."""

import sys

from mypt_jax.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
