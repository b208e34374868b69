"""The environment of a command-line run started by a test."""

import os


def single_device_env() -> dict[str, str]:
  """This process's environment on the CPU without conftest's 8 fake devices.

  The command-line configs size their batches for one device; the suite's fake devices would make
  them refuse to start (a batch of 4 does not divide by 8).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  return env
