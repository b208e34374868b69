r"""kd_jax command line.

  python -m kd_jax.main --config configs/<name>.py[:variant] [--config.a.b=value ...] \
      [--workdir DIR] [--distributed]

The config file's ``get_config(variant)`` builds a locked ``ml_collections.ConfigDict``; overrides
must name existing fields and are type-checked. The run dispatches on ``config.method`` to
``kd_jax.methods.<method>.run(config, workdir)``. ``--workdir`` defaults to
``runs/<name>[_<variant>]``; running again with the same workdir resumes.

On a TPU pod or a multi-node GPU cluster, set ``KD_JAX_DISTRIBUTED=1`` (or pass ``--distributed``) on
every process: ``jax.distributed.initialize()`` then runs before anything touches the devices.

Bad input (a missing config file, a bad override, an unknown method, a missing dataset) ends with one
line on stderr that says what to do, and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import NoReturn

from kd_jax import _extras

_extras.require("train", _extras.TRAIN_MODULES)  # One line on a losses-only install.

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from kd_jax import distributed
from kd_jax import methods
from kd_jax.errors import Preempted
from kd_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, configs/<name>.py, optionally with ':variant' (passed to "
    "get_config). Fields are overridden with --config.<field>=<value>.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory (local or gs://) for config.json, metrics, checkpoints and the report. "
    "Defaults to runs/<config name>[_<variant>]. Rerunning on the same workdir resumes.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host TPU pods and GPU clusters). Also enabled "
    "by the environment variable KD_JAX_DISTRIBUTED=1.",
)

EXIT_USAGE = 2


def fail(message: str) -> NoReturn:
  """Ends the program with one line on stderr and exit status 2."""
  message = " ".join(str(message).split())
  print(f"kd_jax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _config_file_arg(argv: list[str]) -> str | None:
  """The --config value as typed, before absl parses it (to check that the file exists)."""
  for i, arg in enumerate(argv):
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        return arg[len(prefix):]
  return None


def _last_line(error: BaseException) -> str:
  """The informative part of an error: a config file's own exception, not the loader's traceback."""
  text = str(error.args[0]) if error.args else str(error)
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if len(lines) > 1 and "Traceback" in text:
    return lines[-1]
  return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns every command-line mistake into one line and exit status 2."""
  spec = _config_file_arg(argv)
  if spec is not None:
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
      fail(f"config file {path!r} not found; pass one of the files in configs/, e.g. "
           "--config configs/smoke.py")
  try:
    remaining = flags.FLAGS(argv)
  except SystemExit:
    # absl prints --help/--helpfull/--helpshort and exits with status 1; asking for help succeeded.
    if any(a.split("=")[0] in ("--help", "--helpfull", "--helpshort", "-h", "-?") for a in argv):
      sys.exit(0)
    raise
  except flags.Error as e:
    fail(f"bad command line: {_last_line(e)}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a field that does not exist.
    field = _last_line(e).split()[0].strip("'\"")
    culprit = [a for a in argv if a.startswith("--config.") and field in a]
    fail(f"bad config override {' '.join(culprit) or ''}: the config has no field {field!r}; "
         "overrides must name existing fields (see the config file)")
  if _CONFIG.value is None:
    fail("--config is required, e.g. --config configs/smoke.py")
  try:
    _CONFIG.value.to_dict()
  except Exception as e:  # pylint: disable=broad-except
    fail(f"could not load config {spec!r}: {type(e).__name__}: {e}")
  if len(remaining) > 1:
    fail(f"unexpected arguments {remaining[1:]}; flags look like --name=value")
  return remaining


def default_workdir(config_spec: str) -> str:
  """runs/<config file stem>[_<variant>] for ``configs/<stem>.py[:variant]``."""
  path, _, variant = config_spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if variant:
    name += "_" + "".join(c if c.isalnum() or c in "-." else "_" for c in variant)
  return os.path.join("runs", name)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json; a different config left by an earlier run is kept beside it, not lost."""
  from etils import epath  # Local or gs://; comes with orbax and TFDS.

  wd = epath.Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  path = wd / "config.json"
  if path.exists():
    old = path.read_text()
    if json.loads(old) == json.loads(text):
      return
    n = 1
    while (wd / f"config.{n}.json").exists():
      n += 1
    (wd / f"config.{n}.json").write_text(old)
    logging.warning("The config differs from the one this workdir was started with; the old one "
                    "is kept as config.%d.json.", n)
  path.write_text(text)


def main(argv: list[str]) -> None:
  del argv  # parse_flags has rejected leftovers.
  config = _CONFIG.value
  method_name = config.get("method", None)
  if method_name is None:
    fail("the config has no 'method' field; set config.method to one of: "
         + ", ".join(methods.available()))
  try:
    method = methods.get(method_name)
  except UserError as e:
    fail(str(e))

  if not (_DISTRIBUTED.value or os.environ.get("KD_JAX_DISTRIBUTED", "") not in ("", "0")):
    _run(method, config)
    return
  try:
    distributed.initialize(dict(os.environ))
  except distributed.PortInUse as e:
    print(f"kd_jax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(distributed.EXIT_PORT_IN_USE)
  except UserError as e:
    fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    fail(f"jax.distributed.initialize() failed: {e}. It needs a TPU pod or SLURM, or "
         "KD_JAX_COORDINATOR_ADDRESS, KD_JAX_NUM_PROCESSES and KD_JAX_PROCESS_ID")
  status = 0
  try:
    _run(method, config)
  except SystemExit as e:  # sys.exit(None) is success; a message is a failure, as Python has it
    status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    status = 1
  distributed.leave(status)


def _run(method, config: ml_collections.ConfigDict) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  logging.info("kd_jax: process %d of %d, %d local / %d global devices (%s)",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.default_backend())
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  if "://" not in workdir:  # orbax refuses relative checkpoint paths
    workdir = os.path.abspath(workdir)
  if jax.process_index() == 0:
    _write_config(config, workdir)
  logging.info("kd_jax: method %s, workdir %s", config.method, workdir)
  try:
    method.run(config, workdir)
  except UserError as e:
    fail(str(e))
  except Preempted as e:
    print(f"kd_jax: preempted: {e}", file=sys.stderr, flush=True)


class _QuietLibraries:
  """Drops the INFO chatter of orbax and TensorStore (several lines per checkpoint)."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "tensorstore", "grain"))


def run() -> None:
  """Console entry point."""
  import jax  # pylint: disable=g-import-not-at-top

  logging.get_absl_handler().addFilter(_QuietLibraries())
  # The 'rbg' generator compiles random initialisers several times faster than threefry (measured
  # 8 s vs 42 s for a tiny ResNet init on 2 CPU cores) and is deterministic, which exact resume
  # needs. JAX_DEFAULT_PRNG_IMPL (or --jax_default_prng_impl) overrides it.
  if "JAX_DEFAULT_PRNG_IMPL" not in os.environ:
    jax.config.update("jax_default_prng_impl", "rbg")
  jax.config.parse_flags_with_absl()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
