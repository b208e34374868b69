"""Shared 3-D building blocks: TF-"SAME" padding, the I3D conv unit, SAME max-pool, PyTorch init.

The video models here are ports of PyTorch code (piergiaj/pytorch-i3d and the GenKD code built on
it), so three PyTorch conventions are reproduced exactly:

* **TF-"SAME" padding computed on the fly.** pytorch-i3d pads each spatio-temporal axis of length
  ``n`` by ``total = max(k - s, 0)`` if ``n % s == 0`` else ``max(k - n % s, 0)``, with
  ``total // 2`` in front and the rest behind (:func:`tf_same_padding`). This equals XLA's
  ``padding='SAME'``; it is written out so that the rule is visible and tested against the PyTorch
  formula rather than assumed.
* **Zero-padded max-pool.** pytorch-i3d's ``MaxPool3dSamePadding`` pads with *zeros* (``F.pad``)
  before ``MaxPool3d``; :func:`max_pool3d_same` does the same. Every max-pool in I3D follows a ReLU,
  so zero padding and ``-inf`` padding give the same result there, but on inputs with negative
  values (e.g. a raw clip) the two differ and this function keeps PyTorch's behaviour.
* **PyTorch default initialisation** (``init_scheme='pytorch'``): ``kaiming_uniform(a=sqrt(5))`` for
  kernels, i.e. ``U(+-1/sqrt(fan_in))``, and ``U(+-1/sqrt(fan_in))`` for biases, with PyTorch's
  ``fan_in`` (``in * prod(kernel)`` for convolutions, ``out * prod(kernel)`` for transposed
  convolutions, ``in`` for linear layers). GenKD trains its student from scratch with this init
  (genkd.md 3.1, 12.2). ``init_scheme='flax'`` gives Flax's defaults (LeCun normal kernels, zero
  biases).
  Normalisation layers always start at scale 1, bias 0.

Layout is channels-last throughout: ``[B, T, H, W, C]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

INIT_MODES = ("pytorch", "flax")

# PyTorch BatchNorm3d(eps=1e-3, momentum=0.01) as in I3D; Flax momentum is 1 - PyTorch momentum.
I3D_BN_EPSILON = 1e-3
I3D_BN_MOMENTUM = 0.99
# PyTorch GroupNorm's default epsilon (Flax's default is 1e-6).
GROUP_NORM_EPSILON = 1e-5


def check_init(init_scheme: str) -> None:
  if init_scheme not in INIT_MODES:
    raise ValueError(f"init_scheme must be one of {INIT_MODES}, got {init_scheme!r}")


def torch_kernel_init() -> Initializer:
  """PyTorch's default kernel init ``U(+-1/sqrt(fan_in))`` for a ``[*k, in, out]`` kernel.

  ``fan_in`` is ``in * prod(k)`` (axis -2 times the receptive field). For a Flax ``ConvTranspose``
  with ``transpose_kernel=True`` the kernel is ``[*k, out, in]``, so axis -2 is the transposed
  conv's output channels, which is exactly the dimension PyTorch's ``ConvTranspose`` reads.
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init ``U(+-1/sqrt(fan_in))``; ``fan_in`` as for the layer's kernel."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def layer_inits(init_scheme: str, fan_in: int) -> dict[str, Initializer]:
  """``kernel_init`` and ``bias_init`` keyword arguments for a Conv / Dense / ConvTranspose."""
  check_init(init_scheme)
  if init_scheme == "pytorch":
    return {"kernel_init": torch_kernel_init(), "bias_init": torch_bias_init(fan_in)}
  return {}


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(front, back) zero padding of one axis, as pytorch-i3d's ``compute_pad`` computes it.

  E.g. ``tf_same_padding(224, 7, 2) == (2, 3)`` and ``tf_same_padding(64, 7, 2) == (2, 3)``.
  """
  if size % stride == 0:
    total = max(kernel - stride, 0)
  else:
    total = max(kernel - size % stride, 0)
  return total // 2, total - total // 2


def same_padding_3d(
    shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]]:
  """TF-SAME padding of the (T, H, W) axes of a ``[B, T, H, W, C]`` array."""
  return [tf_same_padding(n, k, s) for n, k, s in zip(shape[1:4], kernel, strides)]


def max_pool3d_same(x: Array, kernel: Sequence[int], strides: Sequence[int]) -> Array:
  """pytorch-i3d's ``MaxPool3dSamePadding``: zero-pad TF-SAME, then a VALID max-pool.

  Zero (not ``-inf``) padding is deliberate, see the module docstring.
  """
  pads = same_padding_3d(x.shape, kernel, strides)
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  return nn.max_pool(x, tuple(kernel), strides=tuple(strides), padding="VALID")


class Unit3D(nn.Module):
  """pytorch-i3d's ``Unit3D``: Conv3d (TF-SAME, no bias) -> BatchNorm3d -> ReLU.

  Submodules are named ``conv3d`` and ``bn`` as in PyTorch, so the state-dict entries
  ``<unit>.conv3d.weight`` and ``<unit>.bn.{weight,bias,running_mean,running_var}`` map to
  ``params/<unit>/conv3d/kernel`` and ``params/<unit>/bn/{scale,bias}``,
  ``batch_stats/<unit>/bn/{mean,var}``.

  Attributes:
    features: output channels.
    kernel_size: (kt, kh, kw).
    strides: (st, sh, sw).
    use_batch_norm: add the BatchNorm (eps 1e-3, PyTorch momentum 0.01), PyTorch-exact
      (:class:`kd_jax.models.layers.BatchNorm`: running variance updated with the unbiased batch
      variance, as ``nn.BatchNorm3d`` does).
    use_bias: conv bias (only the logits unit has one).
    activation: applied last; ``None`` for the logits unit.
    init_scheme: 'pytorch' or 'flax', see the module docstring.
    dtype: computation dtype (parameters stay float32).
    bn_momentum: Flax momentum of the running statistics (``1 -`` PyTorch's); I3D's 0.99 needs
      thousands of steps to settle, too slow for a short from-scratch run.
  """

  features: int
  kernel_size: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  activation: Callable[[Array], Array] | None = nn.relu
  init_scheme: str = "pytorch"
  dtype: Dtype | None = None
  bn_momentum: float = I3D_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    """``mask`` (``[B]``, 1 real / 0 padding; None: all real): BatchNorm's training statistics
    come from the real examples only (:class:`kd_jax.models.layers.BatchNorm`)."""
    kernel = tuple(self.kernel_size)
    strides = tuple(self.strides)
    fan_in = x.shape[-1] * math.prod(kernel)
    x = nn.Conv(
        self.features,
        kernel,
        strides=strides,
        padding=same_padding_3d(x.shape, kernel, strides),
        use_bias=self.use_bias,
        dtype=self.dtype,
        name="conv3d",
        **layer_inits(self.init_scheme, fan_in),
    )(x)
    if self.use_batch_norm:
      x = layers.BatchNorm(
          momentum=self.bn_momentum, epsilon=I3D_BN_EPSILON, dtype=self.dtype, name="bn"
      )(x, train=train, mask=mask)
    if self.activation is not None:
      x = self.activation(x)
    return x
