"""The engine's config blocks, for config files to include."""

import ml_collections

from kd_jax.train import compilation


def engine_config(**train_overrides) -> ml_collections.ConfigDict:
  """``{'train': ..., 'mesh': ...}`` with defaults; merge into an experiment config."""
  train = ml_collections.ConfigDict(dict(
      log_every=50, checkpoint_every=500, max_to_keep=2,
      # Persistent XLA cache: reruns, resumes and stages of one shape compile once. '' = off.
      compilation_cache_dir=compilation.DEFAULT_CACHE_DIR,
      # CPU only: 'default', 'fast' or 'fastest' (kd_jax.train.compilation.CPU_PRESETS).
      cpu_compile="fast"))
  train.update(train_overrides)
  mesh = ml_collections.ConfigDict(dict(num_devices=-1))
  return ml_collections.ConfigDict({"train": train, "mesh": mesh})
