"""The device mesh, shardings, and host batches turned into global arrays.

One ``'data'`` axis spans every device of every process (``Auto`` axis type, so shardings
propagate through the step without sharding-aware rewrites of the losses). Batches are split along
their leading axis; parameters, optimizer state and frozen teachers are replicated. Batches of raw
compressed-video frames (``config.data.augment='device'``) are augmented on the devices as they
arrive (:func:`host_to_global`), so no method sees the difference.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from kd_jax.data import device_augment
from kd_jax.errors import UserError
from kd_jax.train import compilation

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D ``('data',)`` mesh over all devices (``num_devices=-1``) or the first ``num_devices``."""
  devices = jax.devices()
  if num_devices not in (-1, len(devices)):
    if jax.process_count() > 1 or not 0 < num_devices <= len(devices):
      raise UserError(
          f"config.mesh.num_devices={num_devices} does not fit the {len(devices)} devices here; "
          "use -1 (all devices)" + (" on multi-host runs" if jax.process_count() > 1 else "")
      )
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_device_count(mesh: Mesh) -> int:
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def per_host_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch; a ``UserError`` naming the numbers if it cannot split.

  Every device gets the same number of examples, so the global batch must divide by the device
  count and the per-host batch by the local device count.
  """
  n_dev = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise UserError(
        f"the global batch size {global_batch_size} does not divide by the {n_dev} devices of the "
        f"mesh; use a multiple of {n_dev}, e.g. {max(n_dev, global_batch_size // n_dev * n_dev)}"
    )
  n_proc = jax.process_count()
  per_host = global_batch_size // n_proc
  n_local = local_device_count(mesh)
  if global_batch_size % n_proc or per_host % n_local:
    raise UserError(
        f"the global batch size {global_batch_size} gives {global_batch_size / n_proc:g} examples "
        f"per process over {n_proc} processes, which does not divide by the {n_local} local devices"
    )
  return per_host


@functools.lru_cache(maxsize=16)
def _device_augment(mesh: Mesh, sizes: tuple[tuple[str, int], ...]):
  """:func:`device_augment.augment` for output ``sizes``, jitted batch-sharded in and out."""
  return compilation.jit(functools.partial(device_augment.augment, sizes=dict(sizes)),
                         in_shardings=batch_sharded(mesh), out_shardings=batch_sharded(mesh))


def host_to_global(batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's slice of a batch (leading axis) into global sharded arrays.

  A batch with raw compressed-video inputs (``<m>_raw`` and its geometry, from a pipeline with
  ``augment='device'``) comes back with the network inputs ``<m>`` in their place, cropped, flipped
  and normalised on the devices (:mod:`kd_jax.data.device_augment`); any other batch unchanged.
  """
  sharding = batch_sharded(mesh)
  sizes = device_augment.output_sizes(batch) if device_augment.raw_modalities(batch) else {}
  out = jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
  )
  if not sizes:
    return out
  raw = {k for m in sizes for k in device_augment.keys(m)}
  augmented = _device_augment(mesh, tuple(sorted(sizes.items())))(
      {k: v for k, v in out.items() if k in raw})
  return {**{k: v for k, v in out.items() if k not in raw}, **augmented}
