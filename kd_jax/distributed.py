"""Joining and leaving a multi-process JAX job, with every wait bounded.

Joining: TPU pods and SLURM need no settings (JAX discovers them); hosts started by hand
(``launch/ssh.sh``, ``launch/local.sh``) pass ``KD_JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
``KD_JAX_NUM_PROCESSES`` and ``KD_JAX_PROCESS_ID``. Process 0 first checks that nothing listens on
the coordinator port: XLA's gRPC server binds with ``SO_REUSEPORT``, so a second job on the same port
does not fail, the kernel splits the peers' connections between the two coordinators, and both
jobs abort or hang. A taken port ends the process with :data:`EXIT_PORT_IN_USE`, which
``launch/local.sh`` answers by starting again on another port.

Leaving: :func:`leave` replaces the interpreter's normal exit, for two reasons measured on CPU
(``tests/test_launch.py::test_local_launches_run_side_by_side``):

* JAX's shutdown barrier waits for every peer; its bound is ``KD_JAX_SHUTDOWN_TIMEOUT_S``
  (default :data:`DEFAULT_SHUTDOWN_TIMEOUT_S`), after which XLA aborts the process naming the peers
  that did not arrive ("Some timed out task names: ...").
* A result can be read while the same program still runs on another local device (reading a
  replicated array waits for one shard only). If the job leaves then, that device's collective
  never connects, and the interpreter's final garbage collection, destroying the CPU client,
  joins its thread forever: gdb shows ``Py_FinalizeEx -> ~PjRtCpuClient -> pthread_join`` with
  the worker in ``gloo::transport::tcp::Pair::waitUntilConnected``. Once the barrier has passed
  nothing is left to save, so :func:`leave` ends the process with ``os._exit`` instead.
"""

from __future__ import annotations

import errno
import faulthandler
import logging as std_logging
import multiprocessing
import os
import socket
import sys
from typing import NoReturn

from kd_jax.errors import UserError

SHUTDOWN_TIMEOUT_ENV = "KD_JAX_SHUTDOWN_TIMEOUT_S"
DEFAULT_SHUTDOWN_TIMEOUT_S = 120
# sysexits.h EX_TEMPFAIL: "try again"; launch/local.sh retries on another port.
EXIT_PORT_IN_USE = 75
# Past the barrier's own bound, a last resort for a native wait nobody bounded (faulthandler's
# watchdog is a C thread, so it still fires while the interpreter is finalising).
_EXIT_MARGIN_S = 30

_ENV_NAMES = {"coordinator_address": "KD_JAX_COORDINATOR_ADDRESS",
              "num_processes": "KD_JAX_NUM_PROCESSES", "process_id": "KD_JAX_PROCESS_ID"}


class PortInUse(UserError):
  """The coordinator port is taken, possibly by another job's coordinator."""


def settings(env: dict[str, str]) -> dict[str, object]:
  """Explicit ``jax.distributed.initialize`` arguments from ``KD_JAX_*`` variables (see above)."""
  given = {key: env[var] for key, var in _ENV_NAMES.items() if env.get(var)}
  if given and len(given) != len(_ENV_NAMES):
    missing = [var for key, var in _ENV_NAMES.items() if key not in given]
    raise UserError(f"set all of {', '.join(_ENV_NAMES.values())} or none; missing "
                    f"{', '.join(missing)}")
  try:
    for key in ("num_processes", "process_id"):
      if key in given:
        given[key] = int(given[key])
  except ValueError:
    raise UserError("KD_JAX_NUM_PROCESSES and KD_JAX_PROCESS_ID must be integers, got "
                    f"{env.get('KD_JAX_NUM_PROCESSES')!r} and {env.get('KD_JAX_PROCESS_ID')!r}"
                    ) from None
  return given


def shutdown_timeout_s(env: dict[str, str]) -> int:
  value = env.get(SHUTDOWN_TIMEOUT_ENV, "")
  if not value:
    return DEFAULT_SHUTDOWN_TIMEOUT_S
  if not value.isdigit() or int(value) < 1:
    raise UserError(f"{SHUTDOWN_TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
  return int(value)


def check_port_free(address: str) -> None:
  """Raises :class:`PortInUse` if something listens on the port of ``address`` (host:port).

  The probe binds the wildcard address as the coordinator will, without ``SO_REUSEPORT`` (so a
  listening coordinator blocks it) but with ``SO_REUSEADDR`` (so connections lingering in
  TIME_WAIT do not).
  """
  port = int(address.rsplit(":", 1)[1])
  family, wildcard = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
  try:
    probe = socket.socket(family, socket.SOCK_STREAM)
  except OSError:
    probe, wildcard = socket.socket(socket.AF_INET, socket.SOCK_STREAM), "0.0.0.0"
  with probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind((wildcard, port))
    except OSError as e:
      if e.errno != errno.EADDRINUSE:
        raise
      raise PortInUse(f"the coordinator port {port} is already in use (another job's "
                      "coordinator?); pick another port (launch/local.sh picks a free one, "
                      "launch/ssh.sh takes --port)") from None


def initialize(env: dict[str, str]) -> None:
  """``jax.distributed.initialize`` from the environment, with kd_jax's bounded shutdown."""
  import jax  # pylint: disable=g-import-not-at-top

  given = settings(env)
  if given.get("process_id") == 0:
    check_port_free(str(given["coordinator_address"]))
  jax.distributed.initialize(**given, shutdown_timeout_seconds=shutdown_timeout_s(env))


def leave(status: int, *, timeout_s: int | None = None) -> NoReturn:
  """Ends this process of a distributed job with ``status``, within a bounded time.

  On success every process waits at JAX's shutdown barrier (bounded by the shutdown timeout, see
  the module docstring); on failure it does not, since peers may be blocked in a collective that
  will never finish: it leaves at once, and its peers fail fast when they next need it. Logs and
  standard streams are flushed, ``multiprocessing`` children (data workers) stopped, and the
  process ends with ``os._exit``, skipping the interpreter's teardown.
  """
  import jax  # pylint: disable=g-import-not-at-top

  timeout_s = timeout_s or shutdown_timeout_s(dict(os.environ))
  faulthandler.dump_traceback_later(timeout_s + _EXIT_MARGIN_S, exit=True)
  if status == 0:
    jax.distributed.shutdown()
  for child in multiprocessing.active_children():
    child.terminate()
  for child in multiprocessing.active_children():
    child.join(timeout=5)
  std_logging.shutdown()  # Flushes absl's handlers too.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access
