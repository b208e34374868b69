"""The model registry: lazy imports, clear errors, and the (logits, features) contract."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from kd_jax import models


def test_import_is_lazy():
  code = ("import sys, kd_jax.models as m; "
          "print(sorted(k for k in sys.modules if k.startswith('kd_jax.models.')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_names_and_unknown_name():
  assert {"resnet18", "resnet50", "ic_head", "tsm_resnet18", "tsm_resnet50", "tsm_mobilenet_v2",
          "i3d", "top_i3d", "generative_attention"} <= set(models.names())
  with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
    models.get("resnet19")


def test_bad_arguments_list_the_allowed_ones():
  with pytest.raises(ValueError, match="allowed: .*num_classes.*in_channels"):
    models.get("resnet18", num_clases=10)
  with pytest.raises(ValueError, match="required: num_classes"):
    models.get("ic_head", backbone="resnet18", exit=1)
  with pytest.raises(ValueError, match="in_channels"):
    models.get("resnet50", in_channels=-2)
  with pytest.raises(ValueError, match="width_mult"):
    models.get("tsm_mobilenet_v2", width_mult=0)


def _contract(name, shape, **kwargs):
  model = models.get(name, tiny=True, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return out


@pytest.mark.parametrize("name,shape", [
    ("resnet18", (2, 32, 32, 3)),
    ("resnet50", (2, 3, 32, 32, 3)),
    ("tsm_resnet18", (2, 4, 32, 32, 3)),
    ("tsm_resnet50", (2, 4, 32, 32, 3)),
    ("tsm_mobilenet_v2", (2, 4, 32, 32, 3)),
])
def test_every_2d_model_returns_logits_and_channels_last_taps(name, shape):
  logits, features = _contract(name, shape, num_classes=6)
  assert logits.shape == (2, 6)
  assert isinstance(features, dict) and {"layer1", "layer4", "pooled"} <= set(features)
  assert features["layer1"].shape[:len(shape) - 3] == shape[:-3]
  assert features["layer1"].ndim == len(shape)


def test_ic_head_via_registry():
  logits, features = _contract("ic_head", (2, 16, 16, 8), num_classes=3, backbone="resnet18",
                               exit=1)
  assert logits.shape == (2, 3) and features["pooled"].shape == (2, 4, 4, 8)


def test_i3d_builders_resolve():
  # The I3D family lives in its own module; here only that the names resolve (an import error in
  # that module fails this test).
  for name in ("i3d", "top_i3d", "generative_attention"):
    assert callable(models.builder(name)), name
