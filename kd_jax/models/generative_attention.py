"""GenKD's generative attention: the attention head and the conditional VAE (genkd.md 4.1, 4.3).

Port of ``BDNet_student`` / ``BDNet_teacher`` (``deconv1`` + ``Att_Head_5c``) and ``CVAE_student`` /
``CVAE_teacher`` (``CEncoder``, ``CDecoder``) of aaai-24/Generative-based-KD, channels-last. Every
size is read from the input feature map ``F: [B, T, H, W, C]``, so one class serves ``Mixed_5c``
(``[B, 8, 7, 7, 1024]``, recognition) and ``Mixed_4f`` / detection maps alike; the PyTorch code
hard-codes one class per size (``CEncoder`` for 1024 channels, ``CEncoder_832`` for 832).

Three modules, because GenKD trains them differently (the attention head with the network, the
CVAE with its own optimiser in a separate step):

* :class:`AttentionHead`: ``F -> A: [B, T, C]`` in (0, 1), a per-channel, per-time-step gate
  shared over H x W.

  1. ``conv3d``: Conv3d(C -> 512, kernel (1, H, W), VALID, bias) -> ``gn3d`` GroupNorm(32) -> ReLU,
     giving ``[B, T, 512]``;
  2. nearest interpolation of the time axis from T to length C (exactly PyTorch's
     ``F.interpolate(mode='nearest')`` index rule);
  3. ``conv1d``: Conv1d(512 -> C, k=3, TF-SAME padding, bias) -> ``gn1d`` GroupNorm(32) -> ReLU,
     giving ``[B, C (length), C (channels)]``;
  4. ``linear``: Linear(C -> T) on the length axis, then sigmoid; returned as ``[B, T, C]``.

* :class:`ConditionalVAE` with submodules ``encoder`` (:class:`CVAEEncoder`) and ``decoder``
  (:class:`CVAEDecoder`): models ``p(F | A)`` with a per-time-step latent ``z: [B, T, C]`` and the
  conditional prior ``N(A, I)``.

  * encoder ``q(z | F, A)``: ``conv3d`` Conv3d(C -> C, (1, H, W), VALID, bias) -> ``gn``
    GroupNorm(32) -> ReLU -> concat with ``A`` -> ``fc1`` (2C -> C) -> ReLU -> ``fc2`` (C -> C)
    -> ReLU -> ``fc3`` (C -> 2C), split into ``mean`` and ``log_var``;
  * decoder: concat ``[z, A]`` -> ``fc1`` (2C -> C) -> ReLU -> ``fc2`` -> ReLU -> ``fc3`` (C -> C)
    -> ``deconv3d`` ConvTranspose3d(C -> C, (1, H, W)) from a 1x1 map -> ``gn`` GroupNorm(32)
    -> ReLU, giving ``[B, T, H, W, C]`` (the final ReLU fits because I3D features are >= 0).
  * modes: ``'posterior'`` (the code's ``'forward'``): ``z = mean + exp(log_var / 2) * eps``;
    ``'prior'`` (the code's ``'inference'``): ``z = A + eps``. ``eps ~ N(0, I)`` is drawn from
    the RNG stream ``'reparam'`` (posterior) or ``'prior'`` (prior), as genkd.md 12.3 names them
    (configurable through ``posterior_rng`` / ``prior_rng``), unless the caller passes ``noise``
    (e.g. zeros for a deterministic reconstruction; the PyTorch code has no such path).

* :class:`GenerativeAttention`: both, as submodules ``attention_head`` and ``cvae``, with one
  ``__call__`` and ``mode='attention' | 'posterior' | 'prior'``. Its parameters are
  ``{'attention_head': ..., 'cvae': ...}``, so the two halves can be given different optimisers
  (e.g. ``optax.multi_transform`` on the top-level key) or stored apart; applying with only
  ``{'attention_head': ...}`` works in ``'attention'`` mode, and ``'posterior'`` / ``'prior'``
  accept a precomputed ``attention`` (then the head is not run and its parameters are not needed).

The builder ``generative_attention(part='both' | 'attention' | 'cvae', tiny=False, **kwargs)``
(registered as ``"generative_attention"``) returns one of the three.

No layer behaves differently in training (GroupNorm, no dropout); ``train`` is accepted for the
interface every kd_jax model shares.

Sizes at ``Mixed_5c`` (C = 1024, 7 x 7, T = 8): attention head 27,275,784 parameters (the 7x7 conv
alone 25,690,624); CVAE 112,210,944 (encoder 56,630,272, decoder 55,580,672). At ``Mixed_4f`` of a
224x224 clip (832, 14 x 14, T = 16) the (1, 14, 14) convs make them much larger (attention head
84,788,176, CVAE 277,592,640). Initialise in ``'posterior'`` mode (the default), which creates
every parameter; ``'prior'`` mode does not touch the encoder.

Parameter names (for :mod:`kd_jax.models.convert`; PyTorch kernel layouts ``[out, in, *k]`` become
``[*k, in, out]``, Linear ``[out, in]`` becomes ``[in, out]``)::

  deconv1.0.{weight,bias}              -> attention_head/conv3d/{kernel,bias}
  deconv1.1.{weight,bias}              -> attention_head/gn3d/{scale,bias}
  Att_Head_5c.0.conv1d.{weight,bias}   -> attention_head/conv1d/{kernel,bias}  ([3, 512, C])
  Att_Head_5c.1.{weight,bias}          -> attention_head/gn1d/{scale,bias}
  Att_Head_5c.3.{weight,bias}          -> attention_head/linear/{kernel,bias}
  cencoder.con1.0.{weight,bias}        -> cvae/encoder/conv3d/{kernel,bias}
  cencoder.con1.1.{weight,bias}        -> cvae/encoder/gn/{scale,bias}
  cencoder.fc{1,2,3}.{weight,bias}     -> cvae/encoder/fc{1,2,3}/{kernel,bias}
  cdecoder.fc{1,2,3}.{weight,bias}     -> cvae/decoder/fc{1,2,3}/{kernel,bias}
  cdecoder.deconv.0.{weight,bias}      -> cvae/decoder/deconv3d/{kernel,bias}
  cdecoder.deconv.1.{weight,bias}      -> cvae/decoder/gn/{scale,bias}

(``cencoder_832`` / ``con2`` / ``cdecoder_832`` for the 832-channel branch map the same way.) Every
kernel, the ``ConvTranspose3d`` one included, maps by the same rule: PyTorch ``[a, b, *k]`` ->
Flax ``[*k, b, a]`` (``w.permute(2, 3, 4, 1, 0)``). For the transposed conv ``a`` is its input and
``b`` its output, which is why ``deconv3d`` uses ``transpose_kernel=True``: its kernel is
``[1, H, W, out, in]`` and the op is the adjoint of a conv with that kernel, exactly as PyTorch
defines ``ConvTranspose3d``, with no spatial flip needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.models import layers3d

Array = jax.Array

MODES = ("attention", "posterior", "prior")
CVAE_MODES = ("posterior", "prior")
PARTS = ("both", "attention", "cvae")


class CVAEOutput(NamedTuple):
  """What the CVAE returns; every field ``[B, T, C]`` except ``reconstruction [B, T, H, W, C]``.

  In ``'prior'`` mode ``mean`` is ``A`` and ``log_var`` is 0: the prior ``N(A, I)`` the sample was
  drawn from.
  """

  mean: Array
  log_var: Array
  z: Array
  reconstruction: Array


class GenerativeOutput(NamedTuple):
  """What :class:`GenerativeAttention` returns; the CVAE fields are None in ``'attention'`` mode."""

  attention: Array
  mean: Array | None = None
  log_var: Array | None = None
  z: Array | None = None
  reconstruction: Array | None = None


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of PyTorch's ``F.interpolate(mode='nearest')`` along one axis.

  PyTorch computes ``min(floor(i * float32(in / out)), in - 1)`` in single precision; doing the same
  here keeps non-integer ratios identical too (for integer ratios it is ``repeat``).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, in_size - 1)


def _check_feature_map(features: Array, num_groups: int, where: str) -> tuple[int, ...]:
  if features.ndim != 5:
    raise ValueError(
        f"{where}: expected features [B, T, H, W, C], got shape {tuple(features.shape)}"
    )
  c = features.shape[-1]
  if c % num_groups:
    raise ValueError(
        f"{where}: {c} feature channels are not divisible by num_groups={num_groups} (GroupNorm)"
    )
  return tuple(features.shape)


def _group_norm(num_groups: int, dtype: Any, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=num_groups, epsilon=layers3d.GROUP_NORM_EPSILON, dtype=dtype, name=name
  )


def _dense(features: int, fan_in: int, init_scheme: str, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, name=name, **layers3d.layer_inits(init_scheme, fan_in))


class AttentionHead(nn.Module):
  """GenKD's attention head ``F [B, T, H, W, C] -> A [B, T, C]``; see the module docstring.

  Attributes:
    hidden_channels: channels of the (1, H, W) conv (512 in GenKD).
    num_groups: GroupNorm groups (32); must divide ``hidden_channels`` and C.
    init_scheme: 'pytorch' (the GenKD code's effective init) or 'flax'.
    dtype: computation dtype.
  """

  hidden_channels: int = 512
  num_groups: int = 32
  init_scheme: str = "pytorch"
  dtype: Any = None

  @nn.compact
  def __call__(self, features: Array, *, train: bool = False) -> Array:
    del train  # nothing here depends on it
    _, t, h, w, c = _check_feature_map(features, self.num_groups, "AttentionHead")
    if self.hidden_channels % self.num_groups:
      raise ValueError(
          f"hidden_channels={self.hidden_channels} is not divisible by num_groups={self.num_groups}"
      )
    x = nn.Conv(
        self.hidden_channels,
        (1, h, w),
        padding="VALID",
        dtype=self.dtype,
        name="conv3d",
        **layers3d.layer_inits(self.init_scheme, c * h * w),
    )(features)
    x = nn.relu(_group_norm(self.num_groups, self.dtype, "gn3d")(x))
    x = x[:, :, 0, 0, :]  # [B, T, hidden]
    # The code resizes time to the *channel count* C so that the 1-D conv below sees a length-C
    # sequence; Linear(C -> T) then maps each channel's length-C profile back to T steps.
    x = x[:, nearest_indices(t, c), :]  # [B, C (length), hidden]
    x = nn.Conv(
        c,
        (3,),
        padding=[layers3d.tf_same_padding(c, 3, 1)],
        dtype=self.dtype,
        name="conv1d",
        **layers3d.layer_inits(self.init_scheme, self.hidden_channels * 3),
    )(x)
    x = nn.relu(_group_norm(self.num_groups, self.dtype, "gn1d")(x))  # [B, L=C, C]
    x = jnp.swapaxes(x, 1, 2)  # [B, C, L]
    x = _dense(t, c, self.init_scheme, self.dtype, "linear")(x)  # [B, C, T]
    return jnp.swapaxes(nn.sigmoid(x), 1, 2)


class CVAEEncoder(nn.Module):
  """``q(z | F, A)``: ``([B, T, H, W, C], [B, T, C]) -> (mean, log_var)``, each ``[B, T, C]``."""

  num_groups: int = 32
  init_scheme: str = "pytorch"
  dtype: Any = None

  @nn.compact
  def __call__(self, features: Array, attention: Array) -> tuple[Array, Array]:
    b, t, h, w, c = _check_feature_map(features, self.num_groups, "CVAEEncoder")
    if attention.shape != (b, t, c):
      raise ValueError(
          f"CVAEEncoder: attention {tuple(attention.shape)} does not match features "
          f"{(b, t, h, w, c)}; expected {(b, t, c)}"
      )
    x = nn.Conv(
        c,
        (1, h, w),
        padding="VALID",
        dtype=self.dtype,
        name="conv3d",
        **layers3d.layer_inits(self.init_scheme, c * h * w),
    )(features)
    x = nn.relu(_group_norm(self.num_groups, self.dtype, "gn")(x))[:, :, 0, 0, :]
    x = jnp.concatenate([x, attention.astype(x.dtype)], axis=-1)  # [B, T, 2C]
    x = nn.relu(_dense(c, 2 * c, self.init_scheme, self.dtype, "fc1")(x))
    x = nn.relu(_dense(c, c, self.init_scheme, self.dtype, "fc2")(x))
    x = _dense(2 * c, c, self.init_scheme, self.dtype, "fc3")(x)
    return x[..., :c], x[..., c:]


class CVAEDecoder(nn.Module):
  """``Dec(z, A)``: ``([B, T, C], [B, T, C]) -> F_hat [B, T, H, W, C]`` for a given (H, W)."""

  num_groups: int = 32
  init_scheme: str = "pytorch"
  dtype: Any = None

  @nn.compact
  def __call__(self, z: Array, attention: Array, *, spatial_shape: Sequence[int]) -> Array:
    if z.ndim != 3 or z.shape != attention.shape:
      raise ValueError(
          f"CVAEDecoder: z {tuple(z.shape)} and attention {tuple(attention.shape)} must both be "
          "[B, T, C]"
      )
    c = z.shape[-1]
    if c % self.num_groups:
      raise ValueError(
          f"CVAEDecoder: {c} channels are not divisible by num_groups={self.num_groups}"
      )
    h, w = spatial_shape
    x = jnp.concatenate([z, attention.astype(z.dtype)], axis=-1)  # [B, T, 2C]
    x = nn.relu(_dense(c, 2 * c, self.init_scheme, self.dtype, "fc1")(x))
    x = nn.relu(_dense(c, c, self.init_scheme, self.dtype, "fc2")(x))
    x = _dense(c, c, self.init_scheme, self.dtype, "fc3")(x)
    # transpose_kernel=True: the kernel is [1, H, W, out, in], PyTorch's [in, out, 1, H, W] under
    # the same transpose as any conv weight, and the op is the exact adjoint of a conv with it, as
    # PyTorch's is. PyTorch's fan_in reads its weight dim 1 (out), here axis -2: the usual one.
    x = nn.ConvTranspose(
        c,
        (1, h, w),
        padding="VALID",
        transpose_kernel=True,
        dtype=self.dtype,
        name="deconv3d",
        **layers3d.layer_inits(self.init_scheme, c * h * w),
    )(x[:, :, None, None, :])
    return nn.relu(_group_norm(self.num_groups, self.dtype, "gn")(x))


class ConditionalVAE(nn.Module):
  """GenKD's CVAE over ``F`` given ``A`` with the prior ``N(A, I)``; see the module docstring.

  Attributes:
    spatial_shape: (H, W) of the feature map. Needed only for ``'prior'`` mode without
      ``features``; otherwise read from ``features`` (and checked against this when both are set).
    num_groups: GroupNorm groups (32); must divide C.
    posterior_rng: RNG stream of the reparameterisation noise.
    prior_rng: RNG stream of the prior-sampling noise.
    init_scheme: 'pytorch' or 'flax'.
    dtype: computation dtype.
  """

  spatial_shape: Sequence[int] | None = None
  num_groups: int = 32
  posterior_rng: str = "reparam"
  prior_rng: str = "prior"
  init_scheme: str = "pytorch"
  dtype: Any = None

  def setup(self):
    layers3d.check_init(self.init_scheme)
    kw = dict(num_groups=self.num_groups, init_scheme=self.init_scheme, dtype=self.dtype)
    self.encoder = CVAEEncoder(**kw)
    self.decoder = CVAEDecoder(**kw)

  def _spatial(self, features: Array | None) -> tuple[int, int]:
    fixed = None if self.spatial_shape is None else tuple(self.spatial_shape)
    if features is None:
      if fixed is None:
        raise ValueError(
            "ConditionalVAE: 'prior' mode without features needs spatial_shape=(H, W) to be set"
        )
      return fixed
    hw = tuple(features.shape[2:4])
    if fixed is not None and hw != fixed:
      raise ValueError(f"ConditionalVAE: features are {hw} in (H, W) but spatial_shape={fixed}")
    return hw

  def _noise(self, stream: str, like: Array, noise: Array | None) -> Array:
    if noise is None:
      return jax.random.normal(self.make_rng(stream), like.shape, like.dtype)
    if noise.shape != like.shape:
      raise ValueError(f"ConditionalVAE: noise {tuple(noise.shape)} must be {tuple(like.shape)}")
    return noise.astype(like.dtype)

  def encode(self, features: Array, attention: Array) -> tuple[Array, Array]:
    """Posterior parameters ``(mean, log_var)``, each ``[B, T, C]``."""
    return self.encoder(features, attention)

  def decode(
      self, z: Array, attention: Array, spatial_shape: Sequence[int] | None = None
  ) -> Array:
    """``Dec(z, A)``, ``[B, T, H, W, C]``; (H, W) from the argument or ``self.spatial_shape``."""
    hw = tuple(spatial_shape) if spatial_shape is not None else self._spatial(None)
    return self.decoder(z, attention, spatial_shape=hw)

  def __call__(
      self,
      features: Array | None,
      attention: Array,
      *,
      train: bool = False,
      mode: str = "posterior",
      noise: Array | None = None,
  ) -> CVAEOutput:
    """Runs the CVAE.

    Args:
      features: ``F [B, T, H, W, C]``; may be None in ``'prior'`` mode if ``spatial_shape`` is set.
      attention: ``A [B, T, C]``, the condition and the prior mean.
      train: unused (no train-dependent layers); kept for the shared interface.
      mode: ``'posterior'`` (encode ``F``, reparameterise) or ``'prior'`` (``z = A + eps``).
      noise: ``eps [B, T, C]`` to use instead of drawing from the RNG stream.

    Returns:
      :class:`CVAEOutput`.
    """
    del train
    if mode not in CVAE_MODES:
      raise ValueError(f"ConditionalVAE: mode must be one of {CVAE_MODES}, got {mode!r}")
    hw = self._spatial(features)
    if mode == "posterior":
      if features is None:
        raise ValueError("ConditionalVAE: 'posterior' mode needs features")
      mean, log_var = self.encode(features, attention)
      z = mean + jnp.exp(0.5 * log_var) * self._noise(self.posterior_rng, mean, noise)
    else:
      mean = attention
      log_var = jnp.zeros_like(attention)
      z = attention + self._noise(self.prior_rng, attention, noise)
    return CVAEOutput(mean, log_var, z, self.decoder(z, attention, spatial_shape=hw))


class GenerativeAttention(nn.Module):
  """Attention head + CVAE as one module (submodules ``attention_head`` and ``cvae``).

  Attributes: as :class:`AttentionHead` and :class:`ConditionalVAE`.
  """

  hidden_channels: int = 512
  num_groups: int = 32
  spatial_shape: Sequence[int] | None = None
  posterior_rng: str = "reparam"
  prior_rng: str = "prior"
  init_scheme: str = "pytorch"
  dtype: Any = None

  def setup(self):
    layers3d.check_init(self.init_scheme)
    self.attention_head = AttentionHead(
        hidden_channels=self.hidden_channels,
        num_groups=self.num_groups,
        init_scheme=self.init_scheme,
        dtype=self.dtype,
    )
    self.cvae = ConditionalVAE(
        spatial_shape=self.spatial_shape,
        num_groups=self.num_groups,
        posterior_rng=self.posterior_rng,
        prior_rng=self.prior_rng,
        init_scheme=self.init_scheme,
        dtype=self.dtype,
    )

  def __call__(
      self,
      features: Array,
      *,
      train: bool = False,
      mode: str = "posterior",
      attention: Array | None = None,
      noise: Array | None = None,
  ) -> GenerativeOutput:
    """Attention and, unless ``mode='attention'``, the CVAE on ``(F, A)``.

    Args:
      features: ``F [B, T, H, W, C]``.
      train: unused (no train-dependent layers); kept for the shared interface.
      mode: ``'attention'``, ``'posterior'`` or ``'prior'``.
      attention: a precomputed ``A [B, T, C]`` (e.g. the student's, fed to the teacher CVAE in
        GenKD's generative distillation); the head is then not run.
      noise: ``eps`` for the CVAE instead of the RNG stream.

    Returns:
      :class:`GenerativeOutput`.
    """
    if mode not in MODES:
      raise ValueError(f"GenerativeAttention: mode must be one of {MODES}, got {mode!r}")
    if attention is None:
      attention = self.attention_head(features, train=train)
    if mode == "attention":
      return GenerativeOutput(attention)
    out = self.cvae(features, attention, train=train, mode=mode, noise=noise)
    return GenerativeOutput(attention, *out)


TINY = {"hidden_channels": 32}


def generative_attention(
    *, part: str = "both", tiny: bool = False, **kwargs: Any
) -> GenerativeAttention | AttentionHead | ConditionalVAE:
  """GenKD's generative attention module, or one of its halves.

  Args:
    part: ``'both'`` (:class:`GenerativeAttention`), ``'attention'`` (:class:`AttentionHead`) or
      ``'cvae'`` (:class:`ConditionalVAE`).
    tiny: shorthand for ``hidden_channels=32`` (tests, quickstart; the CVAE is sized by the
      features alone, so pair it with a tiny backbone); explicit keyword arguments win.
    **kwargs: attributes of the chosen module: ``hidden_channels`` (512), ``num_groups`` (32),
      ``spatial_shape``, ``posterior_rng`` ('reparam'), ``prior_rng`` ('prior'), ``init_scheme``
      ('pytorch'), ``dtype``.

  Returns:
    An unbound linen module.
  """
  if part not in PARTS:
    raise ValueError(f"generative_attention: part must be one of {PARTS}, got {part!r}")
  if tiny and part != "cvae":
    kwargs = {**TINY, **kwargs}
  if part == "attention":
    return AttentionHead(**kwargs)
  if part == "cvae":
    return ConditionalVAE(**kwargs)
  return GenerativeAttention(**kwargs)
