"""PKD internal classifiers (ICs) and PyTorch-exact adaptive average pooling.

An IC head (PKD `IC_Model` / `IC_Model_Resnet50`, pkd_wise.md section 3.2) is

    Conv2d(k x k, stride 1, padding 1, no bias) -> BatchNorm -> AdaptiveAvgPool2d(4)
      -> flatten -> Linear

with no ReLU. The flatten uses PyTorch's channel-major order (C, H, W), so a PyTorch IC's Linear
weight maps onto `fc/kernel` by a plain transpose.

`AdaptiveAvgPool2d(out)` on an n-long axis averages bin i over
`[floor(i n / out), ceil((i+1) n / out))`. When `out` does not divide n the bins overlap or differ
in size (n = 14, out = 4: [0,4), [3,7), [7,11), [10,14)), so a reshape-and-mean would be wrong;
`adaptive_avg_pool` applies the exact bins as two small averaging matrices.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.models import layers
from kd_jax.models import tsn

Array = jax.Array

# (kernel_size, out_channels) of IC1..IC3 per backbone, from the PKD training scripts.
IC_CONFIGS = {
    "resnet18": ((7, 64), (3, 128), (3, 256)),
    "resnet50": ((3, 64), (3, 256), (3, 1024)),
}
IC_TAPS = ("layer1", "layer2", "layer3")


def adaptive_pool_bins(n: int, out: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive pooling bins `[floor(i n / out), ceil((i + 1) n / out))` for i < out."""
  if n < 1 or out < 1:
    raise ValueError(f"adaptive pooling needs n >= 1 and out >= 1, got n={n}, out={out}")
  return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def _pool_matrix(n: int, out: int) -> np.ndarray:
  m = np.zeros((out, n), np.float32)
  for i, (a, b) in enumerate(adaptive_pool_bins(n, out)):
    m[i, a:b] = 1.0 / (b - a)
  return m


def adaptive_avg_pool(x: Array, output_size: int | Sequence[int]) -> Array:
  """`nn.AdaptiveAvgPool2d(output_size)` on channels-last `[..., H, W, C]`, exact bins."""
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  ph = jnp.asarray(_pool_matrix(x.shape[-3], oh))
  pw = jnp.asarray(_pool_matrix(x.shape[-2], ow))
  y = jnp.einsum("ih,...hwc,jw->...ijc", ph, x.astype(jnp.float32), pw,
                 precision=jax.lax.Precision.HIGHEST)
  return y.astype(x.dtype)


class ICHead(nn.Module):
  """One internal classifier; takes a tap `[B, H, W, C]` or `[B, S, H, W, C]` (TSN mean of logits).

  Attributes:
    num_classes: number of classes K.
    features: conv output channels.
    kernel_size: conv kernel (7 for ResNet-18's IC1, else 3).
    padding: conv padding (1 in PKD for every kernel size, so a 7x7 conv shrinks the map by 4).
    pool_size: adaptive pool output side (4).
    dtype: computation dtype.

  Features: `conv` (the BN output, before pooling) and `pooled` (`[B, pool, pool, features]`),
  with the segment axis restored for 5-D input.
  """

  num_classes: int
  features: int
  kernel_size: int = 3
  padding: int = 1
  pool_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    x, segments = tsn.fold_segments(x, model="ICHead")
    out_hw = [d + 2 * self.padding - self.kernel_size + 1 for d in x.shape[1:3]]
    if min(out_hw) < 1:
      raise ValueError(
          f"ICHead: a {self.kernel_size}x{self.kernel_size} conv with padding {self.padding} "
          f"does not fit a {x.shape[1]}x{x.shape[2]} tap; use a larger input")
    y = layers.conv(self.features, self.kernel_size, padding=self.padding, dtype=self.dtype,
                    name="conv")(x.astype(self.dtype))
    y = layers.BatchNorm(name="bn")(y, train=train)
    pooled = adaptive_avg_pool(y, self.pool_size)
    flat = jnp.transpose(pooled, (0, 3, 1, 2)).reshape(pooled.shape[0], -1)  # PyTorch (C, H, W)
    logits = nn.Dense(self.num_classes, kernel_init=layers.dense_init, dtype=self.dtype,
                      name="fc")(flat).astype(jnp.float32)
    feats = {"conv": y, "pooled": pooled}
    return tsn.segment_consensus(logits, segments), tsn.unfold_segments(feats, segments)


class ICHeads(nn.Module):
  """The three ICs of one PKD backbone, applied to its `layer1..layer3` taps.

  `__call__(taps, *, train)` takes the backbone's feature dict (stop the gradient first if the
  backbone is frozen) and returns logits `[B, 3, K]` (exit order IC1, IC2, IC3) and the heads'
  pooled maps as `ic1`..`ic3`.
  """

  configs: Sequence[tuple[int, int]]
  num_classes: int
  pool_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, taps: dict[str, Array], *, train: bool) -> tuple[Array, dict[str, Array]]:
    missing = [t for t in IC_TAPS[:len(self.configs)] if t not in taps]
    if missing:
      raise ValueError(f"ICHeads needs the backbone taps {list(IC_TAPS)}, missing {missing}")
    logits, feats = [], {}
    for i, (k, c) in enumerate(self.configs):
      head = ICHead(self.num_classes, c, k, pool_size=self.pool_size, dtype=self.dtype,
                    name=f"ic{i + 1}")
      z, f = head(taps[IC_TAPS[i]], train=train)
      logits.append(z)
      feats[f"ic{i + 1}"] = f["pooled"]
    return jnp.stack(logits, axis=1), feats


def _scaled_configs(backbone: str, width: int) -> tuple[tuple[int, int], ...]:
  if backbone not in IC_CONFIGS:
    raise ValueError(f"unknown IC backbone {backbone!r}; allowed: {sorted(IC_CONFIGS)}")
  layers.check_positive_int("width", width)
  return tuple((k, max(1, c * width // 64)) for k, c in IC_CONFIGS[backbone])


def ic_head(
    *,
    num_classes: int,
    backbone: str | None = None,
    exit: int | None = None,  # pylint: disable=redefined-builtin
    features: int | None = None,
    kernel_size: int = 3,
    padding: int = 1,
    pool_size: int = 4,
    width: int = 64,
    tiny: bool = False,
    dtype: Any = jnp.float32,
) -> ICHead:
  """Builds one IC head, either from the PKD table or from explicit `features` / `kernel_size`.

  Args:
    num_classes: number of classes.
    backbone: "resnet18" or "resnet50": take kernel size and channels from PKD's IC table.
    exit: 1, 2 or 3, which IC of that backbone (needs `backbone`).
    features: conv output channels (explicit form; exclusive with `backbone`).
    kernel_size: conv kernel (explicit form).
    padding: conv padding (1 in PKD).
    pool_size: adaptive pool output side (4 in PKD).
    width: the backbone's first-stage width (64 full size); IC channels scale by width / 64.
    tiny: width 8 (matches the tiny backbones).
    dtype: computation dtype.
  """
  layers.check_positive_int("num_classes", num_classes)
  layers.check_positive_int("pool_size", pool_size)
  if backbone is not None:
    if features is not None:
      raise ValueError("ic_head: give either backbone=/exit= or features=, not both")
    if exit not in (1, 2, 3):
      raise ValueError(f"ic_head: exit must be 1, 2 or 3 with backbone=, got {exit!r}")
    kernel_size, features = _scaled_configs(backbone, 8 if tiny else width)[exit - 1]
  elif features is None:
    raise ValueError("ic_head needs backbone= and exit=, or features= (and kernel_size=)")
  elif exit is not None:
    raise ValueError("ic_head: exit= needs backbone=")
  layers.check_positive_int("features", features)
  layers.check_positive_int("kernel_size", kernel_size)
  if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
    raise ValueError(f"padding must be an int >= 0, got {padding!r}")
  return ICHead(num_classes=num_classes, features=features, kernel_size=kernel_size,
                padding=padding, pool_size=pool_size, dtype=jnp.dtype(dtype))


def ic_heads(
    *,
    backbone: str,
    num_classes: int,
    width: int = 64,
    tiny: bool = False,
    pool_size: int = 4,
    dtype: Any = jnp.float32,
) -> ICHeads:
  """Builds IC1..IC3 for a PKD backbone ("resnet18" or "resnet50"); `tiny` scales to width 8."""
  layers.check_positive_int("num_classes", num_classes)
  layers.check_positive_int("pool_size", pool_size)
  return ICHeads(configs=_scaled_configs(backbone, 8 if tiny else width), num_classes=num_classes,
                 pool_size=pool_size, dtype=jnp.dtype(dtype))
