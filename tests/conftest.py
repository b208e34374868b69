"""Test set-up shared by the whole suite.

Two process-wide facts must be settled before anything imports JAX or grain:

* JAX sees 8 fake CPU devices, so sharding tests can build a real ``('data',)`` mesh on a CPU-only
  machine. Single-device code is unaffected: it runs on device 0.
* One persistent XLA cache for the whole suite, in-process and command-line runs alike, so runs of
  the same shapes (a rerun, a resume, a second stage) compile once.
* absl flags count as parsed. grain's multiprocessing workers read absl flags and fail under pytest,
  which never calls ``app.run`` (jax_stack.md section 7.2).
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# As the command line does (kd_jax/main.py): random initialisers compile much faster with rbg.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "kd_jax_test_xla"))
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

from absl import flags  # noqa: E402
import pytest  # noqa: E402

flags.FLAGS.mark_as_parsed()

NUM_FAKE_DEVICES = 8


@pytest.fixture(scope="session")
def cpu_devices():
  """The fake CPU devices; skips when the platform was set up differently."""
  import jax

  devices = jax.devices()
  if len(devices) < NUM_FAKE_DEVICES:
    pytest.skip(f"needs {NUM_FAKE_DEVICES} fake CPU devices, found {len(devices)}")
  return devices
