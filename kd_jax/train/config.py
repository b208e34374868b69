"""The engine's config blocks, for config files to include."""

import ml_collections


def engine_config(**train_overrides) -> ml_collections.ConfigDict:
  """``{'train': ..., 'mesh': ...}`` with defaults; merge into an experiment config."""
  train = ml_collections.ConfigDict(dict(log_every=50, checkpoint_every=500, max_to_keep=2))
  train.update(train_overrides)
  mesh = ml_collections.ConfigDict(dict(num_devices=-1))
  return ml_collections.ConfigDict({"train": train, "mesh": mesh})
