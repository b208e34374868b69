"""AFSD's ``BDNet`` (anchor-free saliency-based temporal action detection) on I3D / Top-heavy I3D.

Reference: Lin et al., "Learning Salient Boundary Feature for Anchor-free Temporal Action
Localization" (CVPR 2021), official code TencentYoutuResearch/ActionDetection-AFSD
(``AFSD/thumos14/BDNet.py``, ``AFSD/common/layers.py``); GenKD's detection networks
(aaai-24/Generative-based-KD ``detection/GKD/thumos14/BDNet_{teacher,student}.py``, genkd.md 3.2)
are the same ``CoarsePyramid`` on I3D (teacher) or Top-heavy I3D (student). Channels-last: clips
``[B, T, H, W, C]``, 1-D features ``[B, T, C]``.

Structure (official sizes for a ``[B, 256, 96, 96, 3]`` clip; every size below is derived from
the input, so other clip lengths and crops work too):

* ``backbone``: :class:`kd_jax.models.i3d.InceptionI3d` up to ``Mixed_5c`` (no classifier head):
  ``Mixed_4f [B, 64, 6, 6, 832]``, ``Mixed_5c [B, 32, 3, 3, 1024]``. ``freeze_bn`` runs its
  BatchNorm on the running statistics even when ``train=True`` (the official ``train()`` puts
  every ``BatchNorm3d`` in eval mode), so ``batch_stats`` never change; ``freeze_bn_affine``
  (BatchNorm scale and bias not trained) is an optimiser matter: :func:`freeze_bn_affine` wraps an
  optax transformation so that they get zero updates (no weight decay either), as
  ``requires_grad_(False)`` does.
* ``coarse_pyramid_detection`` (:class:`CoarsePyramid`), ``C = channels`` (512):

  - level 0: ``Mixed_4f`` -> Conv3d(832 -> C, (1, h, w) VALID, bias) -> GroupNorm(32) -> ReLU, with
    (h, w) the map's spatial size ((1, 6, 6) at 96x96, the official kernel); level 1: ``Mixed_5c``
    -> Conv3d(1024 -> C, (1, 3, 3)) -> GN -> ReLU; level 1 is added to level 0 after nearest
    upsampling in time; levels 2..5: Conv1d(C -> C, k3, stride 2, SAME) -> GN -> ReLU of the level
    before. Lengths 64, 32, 16, 8, 4, 2 (``num_levels`` = 6).
  - frame-level feature: level 0 upsampled (nearest) to the clip length, then ``deconv``
    (Conv1d k3 -> GN -> ReLU, twice, then k1 -> GN -> ReLU): ``[B, T, C]``; its first C/2
    channels are the ``start`` output, the rest ``end``.
  - shared over levels: ``loc_tower`` and ``conf_tower`` (2 x Conv1d k3 -> GN -> ReLU),
    ``loc_head`` (Conv1d k3 -> 2) followed by a per-level ``ScaleExp`` ``exp(s_i x)``,
    ``conf_head`` (k3 -> K), two :class:`ProposalBranch` (``loc_`` / ``conf_proposal_branch``),
    ``prop_loc_head`` (k1 -> 2), ``prop_conf_head`` (k1 -> K), ``center_head`` (k3 -> 1, on the
    loc proposal feature).
  - boundary regions (under ``no_grad`` in the official code, ``stop_gradient`` here): for the
    anchor at ``c`` of a level of length ``t`` with coarse distances ``(l, r)`` (frames),
    ``(l', r') = (l, r) t / T``, ``p = round(t (c + 0.5) / t - 0.5)`` (= c), ``L = l' + r'``:
    ``[round(p - l' - max(L/10, 1)), round(p - l' + max(L/4, 1)), round(p + r' - max(L/4, 1)),
    round(p + r' + max(L/10, 1))]`` on the level, and the same on the frame axis around the decoded
    segment ``[(c + 0.5) T / t - l, (c + 0.5) T / t + r]`` with ``L = r_f - l_f + 1``
    (:func:`boundary_regions`). ``torch.round`` and ``jnp.round`` both round halves to even.
    Both branches pool the same regions, so the head pools every level in one call
    (:func:`_pool_levels`), which gives the per-level result exactly and compiles much faster.
  - GroupNorm computes the variance in two passes (PyTorch's accuracy; the deep levels normalise
    groups of a few steps).

* :class:`ProposalBranch` (``in = C``, ``P = proposal_channels`` = 512): ``cur_point_conv``
  (k1 -> P, GN, ReLU) on the level feature; ``lr_conv`` (k1 -> 2P, GN, ReLU), boundary-max-pooled
  over the level regions (first P channels over the start region, the rest over the end region,
  :func:`kd_jax.models.boundary_pooling.boundary_max_pooling`); the frame-level feature pooled
  over the frame regions, then ``roi_conv`` (k1 -> P, GN, ReLU); the three concatenated
  ``[roi, pooled lr, cur_point]`` (4P) -> ``proposal_conv`` (k1 -> C, GN, ReLU).

Outputs (``__call__`` returns ``(outputs, features)`` like every kd_jax model; ``A`` is the number
of anchors, the sum of the level lengths, 126 officially; ``K = num_classes`` with 0 background):

==================  =================  ========================================================
key                 shape              what
==================  =================  ========================================================
``loc``             ``[B, A, 2]``      coarse ``(left, right)`` distances in frames (> 0)
``conf``            ``[B, A, K]``      coarse class logits
``prop_loc``        ``[B, A, 2]``      refinement offsets
``prop_conf``       ``[B, A, K]``      refined class logits
``center``          ``[B, A]``         quality logits (official ``[B, A, 1]``)
``priors``          ``[A]``            anchor centres ``(c + 0.5) / t`` (official ``[1, A, 1]``)
``start``/``end``   ``[B, T, C/2]``    frame-level boundary features
``start_loc_prop``  ``[B, t0, P]``     level-0 ``lr_conv`` feature of the loc branch, start half
``end_loc_prop``    ``[B, t0, P]``     ... end half
``start_conf_prop`` ``[B, t0, P]``     the same for the conf branch
``end_conf_prop``   ``[B, t0, P]``
==================  =================  ========================================================

These are the inputs of :mod:`kd_jax.losses.detection` (``multisegment_loss`` takes ``center`` as
``quality_logits`` and ``priors`` as ``anchor_centers``; ``boundary_bce_loss`` the start/end maps).
``features`` holds every I3D endpoint (``Mixed_4f`` and ``Mixed_5c`` are where GenKD's detection
attention heads attach, genkd.md 4.1) plus ``frame_level [B, T, C]``, ``loc_prop_boundary`` and
``conf_prop_boundary`` ``[B, t0, 2P]``: the three maps AFSD's boundary-consistency (SSL) triplet
pools from (:func:`ssl_triplet_features`).

Methods, for GenKD (its ``mode='bone'`` and ``mode='clf'``): ``method="extract_features"`` runs the
backbone alone; ``method="detect"`` runs the head on a feature dict (e.g. the foreground features
``F * A / sum A``), with the clip length given or taken as 4 x the ``Mixed_4f`` length.

Sizes: anchor priors are computed from the actual level lengths; for clip lengths that are a
multiple of ``4 * 2**(num_levels - 1)`` (256 officially) they equal the official ``t // 2`` table.
Shorter clips (e.g. 64 frames: levels 16, 8, 4, 2, 1, 1) run where the official code would not.

Initialisation (``init_scheme``): ``'afsd'`` (the official ``reset_params``: Glorot-uniform kernels,
zero biases, on every conv of the head), ``'genkd'`` (the same, then N(0, 0.01) kernels on the
towers, heads and proposal branches, as GenKD's ``BDNet_{teacher,student}``), ``'pytorch'``
(PyTorch defaults). GroupNorm starts at 1 / 0, ``ScaleExp`` at 1. The backbone always has
PyTorch's default init (it is loaded from a checkpoint in practice).

Parameter names (for :mod:`kd_jax.models.convert`; kernels ``[O, I, *k]`` -> ``[*k, I, O]``)::

  backbone._model.<I3D names>                      -> backbone/<I3D names> (see kd_jax.models.i3d)
  coarse_pyramid_detection. (prefix ``cpd.`` below)
  cpd.pyramids.{0,1}.0.conv3d.{weight,bias}       -> coarse_pyramid_detection/pyramids_{i}/conv3d
  cpd.pyramids.{2..5}.0.conv1d.{weight,bias}      -> .../pyramids_{i}/conv1d
  cpd.pyramids.{i}.1.{weight,bias}                -> .../pyramids_{i}/gn/{scale,bias}
  cpd.{loc,conf}_tower.{j}.0.conv1d / .{j}.1      -> .../{loc,conf}_tower_{j}/conv1d, /gn
  cpd.{loc,conf,center,prop_loc,prop_conf}_head.conv1d -> .../<same>_head/conv1d
  cpd.loc_heads.{i}.scale                         -> .../loc_heads_{i}/scale
  cpd.{loc,conf}_proposal_branch.<conv>.0.conv1d / .1  -> .../{loc,conf}_proposal_branch/<conv>/
                                                     conv1d, /gn  (<conv>: cur_point_conv,
                                                     lr_conv, roi_conv, proposal_conv)
  cpd.deconv.{0,3,6}.conv1d / .{1,4,7}            -> .../deconv_{0,1,2}/conv1d, /gn

Tiny setting for tests and the quickstart: ``tiny=True`` (= ``backbone_width=1/16, channels=128,
proposal_channels=128``), e.g. on 64-frame 32x32 or 48x48 clips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax.models import boundary_pooling
from kd_jax.models import generative_attention
from kd_jax.models import i3d as i3d_lib
from kd_jax.models import layers3d

Array = jax.Array

BACKBONES = ("i3d", "top_i3d")
INIT_SCHEMES = ("afsd", "genkd", "pytorch")
OUTPUT_KEYS = ("loc", "conf", "prop_loc", "prop_conf", "center", "priors", "start", "end",
               "start_loc_prop", "end_loc_prop", "start_conf_prop", "end_conf_prop")
# The maps AFSD's SSL triplet pools from, and the factor from frames to their time axis
# (``BDNet.scales``: the frame-level map has T steps, level 0 has T / 4).
SSL_FEATURES = (("frame_level", 1), ("loc_prop_boundary", 4), ("conf_prop_boundary", 4))


def _inits(kind: str, fan_in: int) -> dict[str, Any]:
  """kernel_init / bias_init of a head conv: 'xavier' (AFSD), 'normal' (GenKD's 0.01), 'pytorch'."""
  if kind == "xavier":
    return {"kernel_init": nn.initializers.xavier_uniform(), "bias_init": nn.initializers.zeros}
  if kind == "normal":
    return {"kernel_init": nn.initializers.normal(0.01), "bias_init": nn.initializers.zeros}
  return layers3d.layer_inits("pytorch", fan_in)


def _group_norm(num_groups: int, channels: int, dtype: Any, name: str) -> nn.GroupNorm:
  if channels % num_groups:
    raise ValueError(
        f"{channels} channels are not divisible by num_groups={num_groups} (GroupNorm); choose "
        "channel counts that are multiples of num_groups"
    )
  # Two-pass variance: the deep levels normalise groups of a few steps whose mean can dwarf their
  # spread, where E[x^2] - E[x]^2 loses the float32 digits PyTorch keeps.
  return nn.GroupNorm(num_groups=num_groups, epsilon=layers3d.GROUP_NORM_EPSILON, dtype=dtype,
                      use_fast_variance=False, name=name)


class Unit1D(nn.Module):
  """AFSD's ``Unit1D`` without activation: Conv1d with bias and TF-SAME padding, ``[B, T, C]``.

  The submodule is named ``conv1d`` as in PyTorch.
  """

  features: int
  kernel_size: int = 1
  stride: int = 1
  init: str = "xavier"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = layers3d.tf_same_padding(x.shape[1], self.kernel_size, self.stride)
    return nn.Conv(self.features, (self.kernel_size,), strides=(self.stride,), padding=[pad],
                   dtype=self.dtype, name="conv1d",
                   **_inits(self.init, x.shape[-1] * self.kernel_size))(x)


class ConvNormReLU1D(nn.Module):
  """``Sequential(Unit1D, GroupNorm(32), ReLU)``; submodules ``conv1d`` and ``gn``."""

  features: int
  kernel_size: int = 1
  stride: int = 1
  num_groups: int = 32
  init: str = "xavier"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    pad = layers3d.tf_same_padding(x.shape[1], self.kernel_size, self.stride)
    x = nn.Conv(self.features, (self.kernel_size,), strides=(self.stride,), padding=[pad],
                dtype=self.dtype, name="conv1d",
                **_inits(self.init, x.shape[-1] * self.kernel_size))(x)
    return nn.relu(_group_norm(self.num_groups, self.features, self.dtype, "gn")(x))


class SpatialValidUnit(nn.Module):
  """Pyramid levels 0 and 1: Conv3d(kernel (1, H, W) VALID, bias) -> GN -> ReLU, ``[B, T, C]``.

  AFSD's ``Unit3D(kernel_shape=[1, 6, 6] / [1, 3, 3], padding='spatial_valid')`` on a 96x96 clip;
  here the kernel covers the map's (H, W), whatever the crop. Submodules ``conv3d`` and ``gn``.
  """

  features: int
  num_groups: int = 32
  init: str = "xavier"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _, _, h, w, c = x.shape
    if self.has_variable("params", "conv3d"):
      kernel = self.variables["params"]["conv3d"]["kernel"]
      if tuple(kernel.shape[1:3]) != (h, w):
        raise ValueError(
            f"this AFSD head was built for {tuple(kernel.shape[1:3])} feature maps (the pyramid "
            f"conv spans the whole map) but got {(h, w)} (shape {tuple(x.shape)}); feed clips of "
            "the crop size it was built for (96x96 for the official weights)"
        )
    x = nn.Conv(self.features, (1, h, w), padding="VALID", dtype=self.dtype, name="conv3d",
                **_inits(self.init, c * h * w))(x)
    x = nn.relu(_group_norm(self.num_groups, self.features, self.dtype, "gn")(x))
    return x[:, :, 0, 0, :]


class ScaleExp(nn.Module):
  """``exp(scale * x)`` with a learned scalar ``scale`` (starts at 1), one per pyramid level."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (1,), jnp.float32)
    return jnp.exp(x * scale.astype(x.dtype))


def boundary_regions(left: Array, right: Array) -> Array:
  """AFSD's boundary regions ``[..., 4]`` of frame segments ``[left, right]`` (each ``[..., 1]``):

  ``round(left - o), round(left + i), round(right - i), round(right + o)``, with
  ``i = max(L / 4, 1)``, ``o = max(L / 10, 1)`` and ``L = right - left + 1`` (the frame-axis rule
  of ``CoarsePyramid.forward`` and of ``BDNet.forward``'s SSL path; the level-axis regions use
  ``L = l + r`` instead). The start region is the first pair, the end region the second.
  """
  return _regions(left, right, right - left + 1.0)


def _regions(left: Array, right: Array, length: Array) -> Array:
  inner = jnp.maximum(length / 4.0, 1.0)
  outer = jnp.maximum(length / 10.0, 1.0)
  return jnp.concatenate([jnp.round(left - outer), jnp.round(left + inner),
                          jnp.round(right - inner), jnp.round(right + outer)], axis=-1)


def level_priors(length: int) -> np.ndarray:
  """Anchor centres ``(c + 0.5) / t`` of a level of length ``t``, float32 as ``torch.Tensor``."""
  return np.asarray([(c + 0.5) / length for c in range(length)], np.float32)


class ProposalBranch(nn.Module):
  """AFSD's ``ProposalBranch``; see the module docstring.

  ``__call__`` is the official forward on one level; :class:`CoarsePyramid` runs the same layers
  through :meth:`boundary_features` and :meth:`combine` so that it can pool every level at once.
  """

  in_channels: int
  proposal_channels: int
  num_groups: int = 32
  init: str = "xavier"
  dtype: Any = None

  def setup(self):
    p = self.proposal_channels
    kw = dict(num_groups=self.num_groups, init=self.init, dtype=self.dtype)
    self.cur_point_conv = ConvNormReLU1D(p, 1, **kw)
    self.lr_conv = ConvNormReLU1D(2 * p, 1, **kw)
    self.roi_conv = ConvNormReLU1D(p, 1, **kw)
    self.proposal_conv = ConvNormReLU1D(self.in_channels, 1, **kw)

  def boundary_features(self, feature: Array) -> tuple[Array, Array]:
    """``(cur_point [B, t, P], lr [B, t, 2P])``: the centre feature and the start|end feature."""
    return self.cur_point_conv(feature), self.lr_conv(feature)

  def combine(self, cur_point: Array, pooled_lr: Array, pooled_roi: Array) -> Array:
    """``proposal_conv([roi_conv(pooled frame-level), pooled lr, cur_point])``, ``[B, t, C]``."""
    roi = self.roi_conv(pooled_roi)
    return self.proposal_conv(jnp.concatenate([roi, pooled_lr, cur_point], axis=-1))

  def __call__(self, feature: Array, frame_level: Array, segments: Array,
               frame_segments: Array) -> tuple[Array, Array]:
    """One level: ``feature [B, t, C]``, ``frame_level [B, T, C]``, ``segments`` and
    ``frame_segments [B, t, 4]`` -> ``(proposal_feature [B, t, C], lr [B, t, 2P])``, the second
    the ``lr_conv`` output before pooling (AFSD's ``start/end_*_prop`` at level 0)."""
    cur_point, lr = self.boundary_features(feature)
    pooled = boundary_pooling.boundary_max_pooling(lr, segments)
    roi = boundary_pooling.boundary_max_pooling(frame_level, frame_segments)
    return self.combine(cur_point, pooled, roi), lr


def _pool_levels(features: Sequence[Array], segments: Sequence[Array]) -> list[Array]:
  """``boundary_max_pooling(features[i], segments[i])`` for every level with one pooling call.

  The levels are laid end to end in time and each level's regions are clipped to that level and
  shifted by its offset; the regions are integers already (rounded), so clipping before the
  kernel's truncation gives exactly the per-level result.
  """
  offsets = np.cumsum([0] + [f.shape[1] for f in features])
  shifted = [jnp.clip(s, 0, f.shape[1] - 1) + o
             for f, s, o in zip(features, segments, offsets)]
  pooled = boundary_pooling.boundary_max_pooling(
      jnp.concatenate(features, axis=1), jnp.concatenate(shifted, axis=1))
  return jnp.split(pooled, offsets[1:-1], axis=1)


def _start_end(x: Array) -> tuple[Array, Array]:
  half = x.shape[-1] // 2
  return x[..., :half], x[..., half:]


class CoarsePyramid(nn.Module):
  """AFSD's ``CoarsePyramid``: ``{'Mixed_4f', 'Mixed_5c'} -> outputs``; see the module docstring.

  Attributes:
    num_classes: K, background included (21 for THUMOS14).
    channels: C of every pyramid level (512).
    proposal_channels: P of the proposal branches (512).
    num_levels: pyramid levels (6).
    num_groups: GroupNorm groups (32).
    init_scheme: 'afsd', 'genkd' or 'pytorch'.
    dtype: computation dtype.
  """

  num_classes: int = 21
  channels: int = 512
  proposal_channels: int = 512
  num_levels: int = 6
  num_groups: int = 32
  init_scheme: str = "afsd"
  dtype: Any = None

  def setup(self):
    if self.init_scheme not in INIT_SCHEMES:
      raise ValueError(f"init_scheme must be one of {INIT_SCHEMES}, got {self.init_scheme!r}")
    if self.num_levels < 2:
      raise ValueError(f"num_levels must be >= 2 (Mixed_4f and Mixed_5c), got {self.num_levels}")
    base = "pytorch" if self.init_scheme == "pytorch" else "xavier"
    head = "normal" if self.init_scheme == "genkd" else base
    c, g, dt = self.channels, self.num_groups, self.dtype

    def unit(features, kernel, init):
      return Unit1D(features, kernel, init=init, dtype=dt)

    def block(kernel, init, stride=1):
      return ConvNormReLU1D(c, kernel, stride, num_groups=g, init=init, dtype=dt)

    def branch():
      return ProposalBranch(c, self.proposal_channels, num_groups=g, init=head, dtype=dt)

    self.pyramids = [SpatialValidUnit(c, num_groups=g, init=base, dtype=dt) for _ in range(2)] + [
        block(3, base, stride=2) for _ in range(2, self.num_levels)]
    self.loc_tower = [block(3, head) for _ in range(2)]
    self.conf_tower = [block(3, head) for _ in range(2)]
    self.loc_head = unit(2, 3, head)
    self.conf_head = unit(self.num_classes, 3, head)
    self.loc_heads = [ScaleExp() for _ in range(self.num_levels)]
    self.loc_proposal_branch = branch()
    self.conf_proposal_branch = branch()
    self.prop_loc_head = unit(2, 1, head)
    self.prop_conf_head = unit(self.num_classes, 1, head)
    self.center_head = unit(1, 3, head)
    self.deconv = [block(3, base), block(3, base), block(1, base)]

  def __call__(self, features: Mapping[str, Array], *, clip_length: int | None = None
               ) -> tuple[dict[str, Array], dict[str, Array]]:
    """Runs the head.

    Args:
      features: ``Mixed_4f [B, T/4, h, w, C4]`` and ``Mixed_5c [B, T/8, h', w', C5]``.
      clip_length: T, the clip's frames (the official ``frame_num`` = 256); None: 4 x the
        ``Mixed_4f`` length.

    Returns:
      ``(outputs, taps)``: the outputs of the module docstring, and ``frame_level``,
      ``loc_prop_boundary``, ``conf_prop_boundary``.
    """
    for name in ("Mixed_4f", "Mixed_5c"):
      if name not in features or jnp.ndim(features[name]) != 5:
        raise ValueError(
            f"the AFSD head needs {name} [B, T, H, W, C] in its feature dict, got "
            f"{None if name not in features else tuple(jnp.shape(features[name]))}")
    x1, x2 = features["Mixed_4f"], features["Mixed_5c"]
    frames = 4 * x1.shape[1] if clip_length is None else int(clip_length)
    if frames < 1:
      raise ValueError(f"clip_length must be >= 1, got {clip_length}")

    level0 = self.pyramids[0](x1)
    x = self.pyramids[1](x2)
    idx = generative_attention.nearest_indices(x.shape[1], level0.shape[1])
    levels = [level0 + x[:, idx], x]
    for conv in self.pyramids[2:]:
      x = conv(x)
      levels.append(x)

    frame_level = levels[0][:, generative_attention.nearest_indices(levels[0].shape[1], frames)]
    for conv in self.deconv:
      frame_level = conv(frame_level)
    out: dict[str, Any] = dict(zip(("start", "end"), _start_end(frame_level)))
    taps = {"frame_level": frame_level}

    locs, confs, priors, segments, frame_segments = [], [], [], [], []
    loc_feats, conf_feats = [], []
    for i, feat in enumerate(levels):
      loc_feat, conf_feat = feat, feat
      for conv in self.loc_tower:
        loc_feat = conv(loc_feat)
      for conv in self.conf_tower:
        conf_feat = conv(conf_feat)
      loc_feats.append(loc_feat)
      conf_feats.append(conf_feat)
      loc = self.loc_heads[i](self.loc_head(loc_feat))  # [B, t, 2]
      locs.append(loc)
      confs.append(self.conf_head(conf_feat))
      t = feat.shape[1]
      prior = jnp.asarray(level_priors(t))[None, :, None]  # [1, t, 1]
      priors.append(prior[0, :, 0])
      seg, frame_seg = _proposal_regions(jax.lax.stop_gradient(loc), prior, t, frames)
      segments.append(seg)
      frame_segments.append(frame_seg)

    # Both branches pool the same frame-level map over the same regions, and their lr features
    # over the same level regions: one pooling call for each instead of four per level (the
    # per-call argmax tables dominated compile time).
    roi = jnp.split(
        boundary_pooling.boundary_max_pooling(frame_level, jnp.concatenate(frame_segments, 1)),
        np.cumsum([s.shape[1] for s in segments])[:-1], axis=1)
    loc_cur, loc_lr = zip(*[self.loc_proposal_branch.boundary_features(f) for f in loc_feats])
    conf_cur, conf_lr = zip(*[self.conf_proposal_branch.boundary_features(f) for f in conf_feats])
    # Start halves first, end halves second, as the pooling's channel split wants.
    both = []
    for loc_b, conf_b in zip(loc_lr, conf_lr):
      (ls, le), (cs, ce) = _start_end(loc_b), _start_end(conf_b)
      both.append(jnp.concatenate([ls, cs, le, ce], axis=-1))
    pooled = _pool_levels(both, segments)

    (out["start_loc_prop"], out["end_loc_prop"]) = _start_end(loc_lr[0])
    (out["start_conf_prop"], out["end_conf_prop"]) = _start_end(conf_lr[0])
    taps.update(loc_prop_boundary=loc_lr[0], conf_prop_boundary=conf_lr[0])

    prop_locs, prop_confs, centers = [], [], []
    for i in range(len(levels)):
      ls, cs, le, ce = jnp.split(pooled[i], 4, axis=-1)
      loc_prop = self.loc_proposal_branch.combine(loc_cur[i], jnp.concatenate([ls, le], -1), roi[i])
      conf_prop = self.conf_proposal_branch.combine(conf_cur[i], jnp.concatenate([cs, ce], -1),
                                                    roi[i])
      prop_locs.append(self.prop_loc_head(loc_prop))
      prop_confs.append(self.prop_conf_head(conf_prop))
      centers.append(self.center_head(loc_prop)[..., 0])

    out.update(loc=jnp.concatenate(locs, 1), conf=jnp.concatenate(confs, 1),
               prop_loc=jnp.concatenate(prop_locs, 1), prop_conf=jnp.concatenate(prop_confs, 1),
               center=jnp.concatenate(centers, 1), priors=jnp.concatenate(priors))
    out = {k: out[k].astype(jnp.float32) for k in OUTPUT_KEYS}
    return out, taps


def _proposal_regions(loc: Array, prior: Array, t: int, frames: int) -> tuple[Array, Array]:
  """Level and frame boundary regions ``[B, t, 4]`` of one level's coarse predictions (the
  ``torch.no_grad`` block of ``CoarsePyramid.forward``); op order as there, in float32."""
  loc = loc.astype(jnp.float32)
  seg = loc / frames * t
  centre = jnp.round(prior * t - 0.5)
  segments = _regions(centre - seg[..., :1], centre + seg[..., 1:], seg[..., :1] + seg[..., 1:])
  left = prior * frames - loc[..., :1]
  right = prior * frames + loc[..., 1:]
  return segments, boundary_regions(left, right)


class BDNet(nn.Module):
  """AFSD's ``BDNet``: I3D / Top-heavy I3D backbone + :class:`CoarsePyramid`.

  Attributes:
    num_classes: K, background included (21 for THUMOS14).
    top_heavy: Top-heavy I3D backbone (GenKD student) instead of I3D (AFSD, GenKD teacher).
    in_channels: clip channels (3 RGB, 2 optical flow; None: any).
    backbone_width: channel multiplier of the backbone (1.0 = published).
    channels: C of the pyramid (512).
    proposal_channels: P of the proposal branches (512).
    num_levels: pyramid levels (6).
    num_groups: GroupNorm groups (32).
    freeze_bn: backbone BatchNorm always on running statistics (official THUMOS14 config: True).
    freeze_bn_affine: backbone BatchNorm scale / bias not trained (True); read by
      :func:`freeze_bn_affine`, which the optimiser must be wrapped with.
    init_scheme: head init, 'afsd', 'genkd' or 'pytorch'.
    bn_momentum: Flax momentum of the backbone BatchNorm running statistics (I3D's 0.99); only
      moves them with ``freeze_bn=False``.
    dtype: computation dtype (parameters and statistics stay float32).
  """

  num_classes: int = 21
  top_heavy: bool = False
  in_channels: int | None = None
  backbone_width: float = 1.0
  channels: int = 512
  proposal_channels: int = 512
  num_levels: int = 6
  num_groups: int = 32
  freeze_bn: bool = True
  freeze_bn_affine: bool = True
  init_scheme: str = "afsd"
  bn_momentum: float = layers3d.I3D_BN_MOMENTUM
  dtype: Any = None

  def setup(self):
    # Only extract_features is ever called, so the I3D classifier head gets no parameters (AFSD
    # builds InceptionI3d up to Mixed_5c, without logits).
    self.backbone = i3d_lib.InceptionI3d(
        in_channels=self.in_channels, top_heavy=self.top_heavy, width=self.backbone_width,
        bn_momentum=self.bn_momentum, dtype=self.dtype)
    self.coarse_pyramid_detection = CoarsePyramid(
        num_classes=self.num_classes, channels=self.channels,
        proposal_channels=self.proposal_channels, num_levels=self.num_levels,
        num_groups=self.num_groups, init_scheme=self.init_scheme, dtype=self.dtype)

  def extract_features(self, x: Array, *, train: bool, mask: Array | None = None
                       ) -> dict[str, Array]:
    """Every I3D endpoint of a ``[B, T, H, W, C]`` clip (GenKD's ``mode='bone'``)."""
    return self.backbone.extract_features(x, train=train and not self.freeze_bn, mask=mask)

  def detect(self, features: Mapping[str, Array], *, clip_length: int | None = None
             ) -> tuple[dict[str, Array], dict[str, Array]]:
    """The head on a feature dict (GenKD's ``mode='clf'``); see :meth:`CoarsePyramid.__call__`."""
    return self.coarse_pyramid_detection(features, clip_length=clip_length)

  def __call__(self, x: Array, *, train: bool, mask: Array | None = None
               ) -> tuple[dict[str, Array], dict[str, Array]]:
    """``(outputs, features)`` of a clip; ``train`` only matters with ``freeze_bn=False``."""
    features = self.extract_features(x, train=train, mask=mask)
    outputs, taps = self.detect(features, clip_length=x.shape[1])
    return outputs, {**features, **taps}


def ssl_triplet_features(features: Mapping[str, Array], proposals: Array
                         ) -> tuple[list[Array], list[Array], list[Array]]:
  """The (anchor, positive, negative) features of AFSD's boundary-consistency (SSL) triplet.

  ``BDNet.forward(ssl=True)``: ``proposals [B, 3, 2]`` are the SSL clip's three segments
  ``(start, end)`` in frames (the pasted action's two halves and the pasted background, from
  ``THUMOSDataset.augment_``); their :func:`boundary_regions` (divided by 1, 4, 4) are
  boundary-max-pooled from ``frame_level``, ``loc_prop_boundary`` and ``conf_prop_boundary``;
  the anchor is segment 0's end-region half, the positive segment 1's start-region half, the
  negative segment 2's start-region half.

  Returns:
    Three lists (one entry per map) of ``[B, D]`` arrays; AFSD weighs the three triplet losses
    (:func:`kd_jax.losses.detection.triplet_margin_loss`) 1, 0.1, 0.1.
  """
  if jnp.ndim(proposals) != 3 or jnp.shape(proposals)[1:] != (3, 2):
    raise ValueError(f"proposals must be [B, 3, 2] (start, end) in frames, got "
                     f"{jnp.shape(proposals)}")
  p = jax.lax.stop_gradient(jnp.asarray(proposals, jnp.float32))
  regions = boundary_regions(p[..., :1], p[..., 1:])
  anchor, positive, negative = [], [], []
  for name, scale in SSL_FEATURES:
    pooled = boundary_pooling.boundary_max_pooling(features[name], regions / scale)
    d = pooled.shape[-1] // 2
    anchor.append(pooled[:, 0, d:])
    positive.append(pooled[:, 1, :d])
    negative.append(pooled[:, 2, :d])
  return anchor, positive, negative


def frozen_bn_affine_mask(params: Any) -> Any:
  """True at every backbone BatchNorm ``scale`` / ``bias`` of a params tree, False elsewhere.

  Found by path: a leaf ``scale`` or ``bias`` under a module ``bn`` below a ``backbone`` module,
  so it also works on trees that nest the BDNet params deeper (e.g. ``{'student': params}``).
  """

  def frozen(path, _):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return (len(names) >= 2 and names[-1] in ("scale", "bias") and names[-2] == "bn"
            and "backbone" in names[:-2])

  return jax.tree_util.tree_map_with_path(frozen, params)


def freeze_bn_affine(tx: optax.GradientTransformation, enabled: bool | BDNet = True
                     ) -> optax.GradientTransformation:
  """``tx`` with the backbone BatchNorm scale and bias frozen (zero updates, no weight decay).

  PyTorch's ``requires_grad_(False)`` leaves them out of the optimiser entirely; zero updates
  through ``optax.multi_transform`` (``set_to_zero`` on :func:`frozen_bn_affine_mask`) are the same
  for SGD, Adam and coupled weight decay. ``enabled`` may be the :class:`BDNet` itself (its
  ``freeze_bn_affine``); when false ``tx`` is returned unchanged.
  """
  if isinstance(enabled, BDNet):
    enabled = enabled.freeze_bn_affine
  if not enabled:
    return tx

  def labels(params):
    return jax.tree.map(lambda f: "frozen" if f else "trained", frozen_bn_affine_mask(params))

  return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


TINY = {"backbone_width": 1 / 16, "channels": 128, "proposal_channels": 128}


def afsd(*, backbone: str = "i3d", tiny: bool = False, **kwargs: Any) -> BDNet:
  """AFSD's BDNet on I3D (AFSD, GenKD teacher) or Top-heavy I3D (GenKD student).

  Args:
    backbone: 'i3d' or 'top_i3d'.
    tiny: shorthand for ``backbone_width=1/16, channels=128, proposal_channels=128`` (tests,
      quickstart); explicit keyword arguments win.
    **kwargs: :class:`BDNet` attributes: ``num_classes`` (21), ``in_channels``,
      ``backbone_width``, ``channels``, ``proposal_channels``, ``num_levels``, ``num_groups``,
      ``freeze_bn`` (True), ``freeze_bn_affine`` (True), ``init_scheme`` ('afsd'), ``dtype``.

  Returns:
    An unbound linen module; ``apply(variables, clip, train=...)`` gives ``(outputs, features)``.
  """
  if backbone not in BACKBONES:
    raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
  if tiny:
    kwargs = {**TINY, **kwargs}
  return BDNet(top_heavy=backbone == "top_i3d", **kwargs)
