"""kd_jax.distributed: settings from the environment, the coordinator-port check, bounded timeouts."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from kd_jax import distributed
from kd_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_settings_from_the_environment():
  env = {"KD_JAX_COORDINATOR_ADDRESS": "h0:1234", "KD_JAX_NUM_PROCESSES": "3",
         "KD_JAX_PROCESS_ID": "2"}
  assert distributed.settings(env) == {"coordinator_address": "h0:1234", "num_processes": 3,
                                       "process_id": 2}
  assert distributed.settings({}) == {}  # TPU pods and SLURM: JAX discovers everything.
  with pytest.raises(UserError, match="missing KD_JAX_PROCESS_ID"):
    distributed.settings({k: v for k, v in env.items() if k != "KD_JAX_PROCESS_ID"})
  with pytest.raises(UserError, match="must be integers"):
    distributed.settings({**env, "KD_JAX_NUM_PROCESSES": "three"})


def test_shutdown_timeout_from_the_environment():
  assert distributed.shutdown_timeout_s({}) == distributed.DEFAULT_SHUTDOWN_TIMEOUT_S
  assert distributed.shutdown_timeout_s({"KD_JAX_SHUTDOWN_TIMEOUT_S": "7"}) == 7
  for bad in ("0", "-3", "1.5", "soon"):
    with pytest.raises(UserError, match="KD_JAX_SHUTDOWN_TIMEOUT_S must be a positive"):
      distributed.shutdown_timeout_s({"KD_JAX_SHUTDOWN_TIMEOUT_S": bad})


def _listener(reuse_port: bool) -> socket.socket:
  """A listening socket like XLA's coordinator (gRPC sets SO_REUSEPORT and SO_REUSEADDR)."""
  s = socket.socket(socket.AF_INET6)
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  if reuse_port:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("::", 0))
  s.listen()
  return s


@pytest.mark.parametrize("reuse_port", [True, False])
def test_a_taken_coordinator_port_is_refused(reuse_port):
  with _listener(reuse_port) as s:
    port = s.getsockname()[1]
    with pytest.raises(distributed.PortInUse, match=f"coordinator port {port} is already in use"):
      distributed.check_port_free(f"127.0.0.1:{port}")
  distributed.check_port_free(f"127.0.0.1:{port}")  # Closed: free again.


def test_main_exits_75_with_one_line_when_the_coordinator_port_is_taken(tmp_path):
  with _listener(reuse_port=True) as s:
    port = s.getsockname()[1]
    env = dict(os.environ, KD_JAX_DISTRIBUTED="1", KD_JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               KD_JAX_NUM_PROCESSES="2", KD_JAX_PROCESS_ID="0")
    result = subprocess.run(
        [sys.executable, "-m", "kd_jax.main", "--config", "configs/smoke.py", "--workdir",
         str(tmp_path / "wd")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == distributed.EXIT_PORT_IN_USE == 75, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("kd_jax:")]
  assert lines == [f"kd_jax: error: the coordinator port {port} is already in use (another job's "
                   "coordinator?); pick another port (launch/local.sh picks a free one, "
                   "launch/ssh.sh takes --port)"], result.stderr
