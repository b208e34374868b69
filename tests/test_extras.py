"""The losses-only install: base dependencies, what kd_jax.losses imports, and the missing-extra line."""

from __future__ import annotations

import ast
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from kd_jax import _extras

REPO = pathlib.Path(__file__).resolve().parents[1]

# Distribution name (as in pyproject.toml, normalised) -> import name, for the train extra.
_TRAIN_IMPORT_NAMES = {
    "flax": "flax",
    "optax": "optax",
    "orbax-checkpoint": "orbax.checkpoint",
    "tensorflow-datasets": "tensorflow_datasets",
    "array-record": "array_record",
    "importlib-resources": "importlib_resources",
    "grain": "grain",
    "ml-collections": "ml_collections",
    "einops": "einops",
    "av": "av",
    "numba": "numba",
    "absl-py": "absl",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "tensorboardx": "tensorboardX",
}


def _project() -> dict:
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _name(requirement: str) -> str:
  """The normalised distribution name of a requirement string (PEP 503), extras kept apart."""
  name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
  return re.sub(r"[-_.]+", "-", name).lower()


def _top_level_imports(path: pathlib.Path) -> set[str]:
  """Every absolute module imported anywhere in `path`, by its top-level name."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return names


def test_require_names_the_missing_module_the_extra_and_the_pip_command(capsys):
  with pytest.raises(SystemExit) as e:
    _extras.require("train", ("json", "kd_jax_no_such_module", "no_such_pkg.sub"))
  assert e.value.code == 2
  message = capsys.readouterr().err
  assert message.count("\n") == 1
  assert message.startswith("kd_jax: error: the training stack is not installed")
  # Only the absent ones, in order; a dotted name whose parent is absent counts as missing.
  assert "(missing: kd_jax_no_such_module, no_such_pkg.sub)" in message
  assert 'pip install "kd-jax[train]"' in message
  assert 'pip install -e ".[train]"' in message


def test_require_of_an_unnamed_extra_says_its_name(capsys):
  with pytest.raises(SystemExit):
    _extras.require("foo", ("kd_jax_no_such_module",))
  assert re.search(r"the 'foo' extra is not installed .*kd-jax\[foo\]", capsys.readouterr().err)


def test_require_passes_when_everything_is_importable():
  # The test environment is installed with the test extra, which includes train.
  assert _extras.require("train", _extras.TRAIN_MODULES) is None
  assert _extras.require("train", ("json", "os.path")) is None


def test_base_dependencies_are_only_jax_and_numpy():
  assert sorted(_name(r) for r in _project()["dependencies"]) == ["jax", "numpy"]


def test_train_modules_match_the_train_extra():
  train = _project()["optional-dependencies"]["train"]
  assert [_TRAIN_IMPORT_NAMES[_name(r)] for r in train] == list(_extras.TRAIN_MODULES)


@pytest.mark.parametrize("extra", ["test", "tpu", "cuda", "convert"])
def test_trainer_extras_pull_the_train_extra(extra):
  assert "kd-jax[train]" in _project()["optional-dependencies"][extra]


def test_losses_and_the_package_import_only_stdlib_jax_and_numpy():
  files = sorted((REPO / "kd_jax/losses").glob("*.py")) + [REPO / "kd_jax/__init__.py"]
  allowed = set(sys.stdlib_module_names) | {"jax", "numpy"}
  for path in files:
    extra = _top_level_imports(path) - allowed
    assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"
  # The checker must work without the extra it checks.
  assert _top_level_imports(REPO / "kd_jax/_extras.py") <= set(sys.stdlib_module_names)


# A run of Python in which the train extra's modules cannot be imported: a losses-only install.
_WITHOUT_TRAIN = """
import sys

class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
    return None

BLOCKED = {m.split(".")[0] for m in %r}
sys.meta_path.insert(0, Block())
"""


def _run_without_train(code: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  script = _WITHOUT_TRAIN % (_extras.TRAIN_MODULES,) + code
  return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


def test_losses_work_and_require_ends_in_one_line_without_the_train_extra():
  proc = _run_without_train(
      "import jax.numpy as jnp\n"
      "from kd_jax import losses, _extras\n"
      "print(losses.hinton_kd_loss(jnp.zeros((2, 5)), jnp.ones((2, 5)), temperature=4.0).tolist())\n"
      "assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n"
      "_extras.require('train', _extras.TRAIN_MODULES)\n")
  assert proc.stdout.strip() == "[0.0, 0.0]", proc.stderr
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("kd_jax: error: the training stack is not installed (missing: flax, optax, ")
  assert "Traceback" not in proc.stderr
