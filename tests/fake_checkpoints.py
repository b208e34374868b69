"""Fake PyTorch checkpoints for the conversion tests (NumPy only: no torch needed)."""

import flax
import numpy as np

from kd_jax.models import convert


def torch_layout_state_dict(abstract, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random PyTorch-layout arrays under the PyTorch names of a Flax variable tree."""
  sd = {}
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    shape = tuple(leaf.shape)
    if path[-1] == "kernel":  # [*k, in, out] -> [out, in, *k]
      shape = (shape[-1], shape[-2]) + shape[:-2] if len(shape) > 2 else shape[::-1]
    sd[convert.torch_key(path[0], path[1:])] = rng.normal(size=shape).astype(np.float32)
  return sd
