"""``python -m kd_jax.bench``: see :mod:`kd_jax.bench.run`."""

import sys

from kd_jax.bench import run

if __name__ == "__main__":
  sys.exit(run.main())
