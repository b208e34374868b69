"""Small building blocks shared by the 2-D models: PyTorch-exact BatchNorm, convs, temporal shift,
the frames-in / logits-out ends of a per-frame network.

BatchNorm follows PyTorch's `nn.BatchNorm2d` exactly, so that converted torchvision weights and
PyTorch-trained running statistics behave the same in Flax:

* momentum: PyTorch's `m = 0.1` is the weight of the *new* batch statistic; Flax's `momentum` is
  the weight of the *old* running value, so the default here is `momentum = 1 - 0.1 = 0.9`.
* epsilon 1e-5.
* the batch is normalised with the biased variance (divide by n), but the running variance is
  updated with the unbiased one (divide by n - 1), as PyTorch does. `flax.linen.BatchNorm` uses the
  biased variance for both, which makes running variances drift apart by a factor n / (n - 1) per
  update; negligible for large maps, visible on 7x7 maps with small batches.

Variable names match `flax.linen.BatchNorm` (`params/scale`, `params/bias`, `batch_stats/mean`,
`batch_stats/var`), so checkpoints are interchangeable with code that uses the stock module.
"""

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import tsn

Array = jax.Array
Dtype = Any

# PyTorch momentum 0.1 expressed in Flax terms.
TORCH_BN_MOMENTUM = 0.9
TORCH_BN_EPSILON = 1e-5

# torchvision's ResNet init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, with PyTorch's exact semantics.

  Attributes:
    momentum: Flax convention, the weight of the old running value (PyTorch 0.1 -> 0.9).
    epsilon: added to the variance.
    dtype: output dtype; statistics are always computed in float32.
  """

  momentum: float = TORCH_BN_MOMENTUM
  epsilon: float = TORCH_BN_EPSILON
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    """``mask`` (optional, ``[B]``, 1 real / 0 padding): in training, the batch statistics and
    the running-statistics update come from the real examples only (a padded batch then behaves
    as the batch of its real examples); a batch without real examples leaves the running
    statistics unchanged."""
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

    xf = x.astype(jnp.float32)
    if train and mask is not None:
      axes = tuple(range(x.ndim - 1))
      w = jnp.asarray(mask, jnp.float32).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
      count = jnp.sum(w) * math.prod(x.shape[1:-1])  # real elements per channel
      denom = jnp.maximum(count, 1.0)
      mean = jnp.sum(xf * w, axes) / denom
      var = jnp.sum(jnp.square(xf - mean) * w, axes) / denom
      if not self.is_initializing():
        unbiased = var * (count / jnp.maximum(count - 1.0, 1.0))
        any_real = count > 0
        ra_mean.value = jnp.where(
            any_real, self.momentum * ra_mean.value + (1.0 - self.momentum) * mean, ra_mean.value)
        ra_var.value = jnp.where(
            any_real, self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased, ra_var.value)
    elif train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      # Two-pass variance: E[(x - mean)^2] is stabler than E[x^2] - E[x]^2 for post-ReLU maps.
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = math.prod(x.shape[:-1])
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype or x.dtype)


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    padding: int | None = None,
    groups: int = 1,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
  """A bias-free 2-D conv with PyTorch's symmetric zero padding (default `(kernel - 1) // 2`).

  Explicit padding matters: Flax's 'SAME' pads stride-2 convs asymmetrically (more on the bottom /
  right), PyTorch pads both sides equally, and converted weights only agree with the latter.
  """
  p = (kernel - 1) // 2 if padding is None else padding
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((p, p), (p, p)),
      feature_group_count=groups,
      use_bias=False,
      kernel_init=conv_init,
      dtype=dtype,
      name=name,
  )


def max_pool_3x3_s2(x: Array) -> Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)`: padded cells are -inf, never selected."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def temporal_shift(x: Array, segments: int, shift_div: int = 8) -> Array:
  """TSM's temporal shift (Lin et al. 2019) on a segment-folded batch `[B*T, H, W, C]`.

  With `fold = C // shift_div`: channels `[0, fold)` take the next frame's values (shift towards
  the past), channels `[fold, 2 fold)` take the previous frame's values, the rest are unchanged;
  frames shifted in from outside the clip are zero. Matches `TemporalShift.shift` of
  mit-han-lab/temporal-shift-module (ops/temporal_shift.py).
  """
  nt, h, w, c = x.shape
  if nt % segments:
    raise ValueError(f"temporal_shift: batch {nt} is not a multiple of segments={segments}")
  fold = c // shift_div
  if fold == 0:
    return x
  v = x.reshape(nt // segments, segments, h, w, c)
  zeros = jnp.zeros_like(v[:, :1, :, :, :fold])
  back = jnp.concatenate([v[:, 1:, :, :, :fold], zeros], axis=1)
  fwd = jnp.concatenate([zeros, v[:, :-1, :, :, fold:2 * fold]], axis=1)
  out = jnp.concatenate([back, fwd, v[..., 2 * fold:]], axis=-1)
  return out.reshape(nt, h, w, c)


def fold_frames(
    x: Array, *, model: str, in_channels: int, temporal_shift: bool) -> tuple[Array, int | None]:
  """The input end of a per-frame network: `tsn.fold_segments`, then a check of the channel count.

  Returns `(frames, segments)` as `tsn.fold_segments` does; clips are required when
  `temporal_shift` is on.
  """
  x, segments = tsn.fold_segments(x, model=model, require_segments=temporal_shift)
  if x.shape[-1] != in_channels:
    raise ValueError(
        f"{model} was built with in_channels={in_channels} but got input with "
        f"{x.shape[-1]} channels (shape {tuple(x.shape)}); pass in_channels=... when building it")
  return x, segments


def pooled_classifier(
    x: Array,
    features: dict[str, Array],
    segments: int | None,
    *,
    num_classes: int,
    dropout_rate: float,
    dtype: Dtype,
    train: bool,
    name: str,
) -> tuple[Array, dict[str, Array]]:
  """The output end of a per-frame network: global average pool, dropout, linear classifier.

  Call it from the network's compact `__call__`: the classifier `nn.Dense` (named `name`) and the
  dropout then belong to the network itself, so parameter paths stay `<name>/kernel`. Adds the
  pooled vector to `features` as tap `pooled`, and returns the TSN-averaged logits (float32) and
  the taps with their segment axis restored.
  """
  pooled = jnp.mean(x, axis=(1, 2))
  features["pooled"] = pooled
  if dropout_rate:
    pooled = nn.Dropout(dropout_rate)(pooled, deterministic=not train)
  logits = nn.Dense(num_classes, kernel_init=dense_init, dtype=dtype,
                    name=name)(pooled).astype(jnp.float32)
  return tsn.segment_consensus(logits, segments), tsn.unfold_segments(features, segments)


def check_positive_int(name: str, value: Any) -> int:
  """Returns `value` if it is an int >= 1, else raises a ValueError naming the argument."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return value


def check_stage_sizes(value: Sequence[int], num_stages: int) -> tuple[int, ...]:
  """Validates a per-stage block count tuple."""
  sizes = tuple(value)
  if len(sizes) != num_stages or any(
      isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
    raise ValueError(
        f"stage_sizes must be {num_stages} positive ints, got {value!r}")
  return sizes


def check_rate(name: str, value: float) -> float:
  """Validates a dropout-like rate in [0, 1)."""
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}")
  return float(value)
