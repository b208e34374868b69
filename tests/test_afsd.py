"""AFSD's BDNet in Flax: shapes, parity with a PyTorch transcription of the official head through
the checkpoint converter, the SSL triplet features, and BatchNorm freezing in a train step.

The PyTorch reference below is written from AFSD/thumos14/BDNet.py and AFSD/common/layers.py
(TencentYoutuResearch/ActionDetection-AFSD) with the official module names, so its state dict is
what an AFSD checkpoint holds; the CUDA boundary max pooling is a Python loop of its kernel. Its
backbone is the small pytorch-i3d reference of test_i3d (width 1/16, no logits).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import losses
from kd_jax import models
from kd_jax.models import afsd
from kd_jax.models import convert

from test_boundary_pooling import np_boundary_pool

TOL = 2e-4
I3D_BN_UNITS = 3 + 9 * 6  # stem units + 6 per inception block


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return variables, out


def _numel(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _numpy_variables(abstract, seed=0):
  """Variables of the given shapes drawn with numpy: He-normal kernels, running variances in
  [0.5, 1.5], the rest N(0, 0.1) (no init to compile, as in test_i3d)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return np.asarray(rng.uniform(0.5, 1.5, leaf.shape), np.float32)
    if "'kernel'" in name:
      return np.asarray(rng.normal(0, math.sqrt(2.0 / math.prod(leaf.shape[:-1])), leaf.shape),
                        np.float32)
    return np.asarray(rng.normal(0, 0.1, leaf.shape), np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


# ---------------------------------------------------------------------------------------------
# Shapes and sizes.


def test_tiny_output_shapes_and_priors():
  model = afsd.afsd(tiny=True, num_classes=5)
  variables, (out, feats) = _abstract(model, (2, 64, 32, 32, 3))
  lengths = (16, 8, 4, 2, 1, 1)  # Mixed_4f has 64 / 4 steps; stride-2 SAME convs after level 1
  a = sum(lengths)
  want = {"loc": (2, a, 2), "conf": (2, a, 5), "prop_loc": (2, a, 2), "prop_conf": (2, a, 5),
          "center": (2, a), "priors": (a,), "start": (2, 64, 64), "end": (2, 64, 64),
          "start_loc_prop": (2, 16, 128), "end_loc_prop": (2, 16, 128),
          "start_conf_prop": (2, 16, 128), "end_conf_prop": (2, 16, 128)}
  assert {k: tuple(v.shape) for k, v in out.items()} == want
  assert feats["Mixed_4f"].shape == (2, 16, 2, 2, 52)
  assert feats["Mixed_5c"].shape == (2, 8, 1, 1, 64)
  assert feats["frame_level"].shape == (2, 64, 128)
  assert feats["loc_prop_boundary"].shape == feats["conf_prop_boundary"].shape == (2, 16, 256)
  head = variables["params"]["coarse_pyramid_detection"]
  assert head["pyramids_0"]["conv3d"]["kernel"].shape == (1, 2, 2, 52, 128)
  assert head["pyramids_1"]["conv3d"]["kernel"].shape == (1, 1, 1, 64, 128)
  assert "logits" not in variables["params"]["backbone"]  # AFSD's I3D stops at Mixed_5c

  # Priors are (c + 0.5) / t per level, float32 as torch.Tensor makes them.
  priors = np.concatenate([[(c + 0.5) / t for c in range(t)] for t in lengths]).astype(np.float32)
  np.testing.assert_array_equal(np.concatenate([afsd.level_priors(t) for t in lengths]), priors)


def test_official_sizes_at_256x96x96():
  """256 frames of 96x96: Mixed_4f 64x6x6x832 and Mixed_5c 32x3x3x1024 make the official
  (1, 6, 6) and (1, 3, 3) pyramid kernels; 6 levels of 512 channels, 126 anchors."""
  for backbone in ("i3d", "top_i3d"):
    variables, (out, feats) = _abstract(afsd.afsd(backbone=backbone), (1, 256, 96, 96, 3))
    assert feats["Mixed_4f"].shape == (1, 64, 6, 6, 832)
    assert feats["Mixed_5c"].shape == (1, 32, 3, 3, 1024)
    head = variables["params"]["coarse_pyramid_detection"]
    assert head["pyramids_0"]["conv3d"]["kernel"].shape == (1, 6, 6, 832, 512)
    assert head["pyramids_1"]["conv3d"]["kernel"].shape == (1, 3, 3, 1024, 512)
    assert out["loc"].shape == (1, 64 + 32 + 16 + 8 + 4 + 2, 2)
    assert out["conf"].shape == (1, 126, 21) and out["start"].shape == (1, 256, 256)
    assert out["start_loc_prop"].shape == (1, 64, 512)
  assert _numel(variables["params"]["backbone"]) == 10_429_088  # Top-I3D (kd_jax.models.i3d)
  # The head's parameter count, from the official layer list (all convs with bias).
  c, p, k = 512, 512, 21

  def conv(cin, cout, ksize):
    return cin * cout * ksize + cout

  gn = 2 * c
  branch = (conv(c, p, 1) + 2 * p + conv(c, 2 * p, 1) + 4 * p + conv(p, p, 1) + 2 * p
            + conv(4 * p, c, 1) + gn)
  expected = (conv(832, c, 36) + gn + conv(1024, c, 9) + gn + 4 * (conv(c, c, 3) + gn)
              + 4 * (conv(c, c, 3) + gn) + conv(c, 2, 3) + conv(c, k, 3) + 6
              + 2 * branch + conv(c, 2, 1) + conv(c, k, 1) + conv(c, 1, 3)
              + 2 * (conv(c, c, 3) + gn) + conv(c, c, 1) + gn)
  assert _numel(variables["params"]["coarse_pyramid_detection"]) == expected


def test_errors_are_one_clear_line():
  with pytest.raises(ValueError, match="backbone must be one of"):
    afsd.afsd(backbone="resnet")
  model = afsd.afsd(tiny=True, num_classes=5)
  variables, _ = _abstract(model, (1, 32, 32, 32, 3))
  with pytest.raises(ValueError, match=r"built for \(2, 2\) feature maps.*got \(3, 3\)"):
    jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 32, 48, 48, 3)), train=False),
                   variables)
  with pytest.raises(ValueError, match="needs Mixed_5c"):
    jax.eval_shape(lambda v: model.apply(v, {"Mixed_4f": jnp.zeros((1, 8, 2, 2, 52))},
                                         method="detect"), variables)
  with pytest.raises(ValueError, match="not divisible by num_groups=32"):
    _abstract(afsd.afsd(tiny=True, channels=48), (1, 32, 32, 32, 3))
  assert models.get("afsd", tiny=True, backbone="top_i3d").top_heavy


# ---------------------------------------------------------------------------------------------
# PyTorch parity through the converter.


def _torch_bmp(torch, x, segments):
  """AFSD's CUDA BoundaryMaxPooling, one (b, k, half) region at a time: [B, C, T] -> [B, C, S]."""
  b_, c_, t_ = x.shape
  out = x.new_zeros(b_, c_, segments.shape[1])
  half = c_ // 2
  for n in range(b_):
    for k in range(segments.shape[1]):
      for h in range(2):
        l, r = (min(max(0, int(v)), t_ - 1) for v in segments[n, k, 2 * h:2 * h + 2].tolist())
        out[n, h * half:(h + 1) * half, k] = x[n, h * half:(h + 1) * half, l:max(l, r) + 1].amax(-1)
  return out


def _torch_bdnet(top_heavy, c, p, num_classes, frame_num, groups=32, layer_num=6, width=1 / 16):
  """AFSD's BDNet with a pytorch-i3d backbone (small by default), official names and forward."""
  from test_i3d import _randomise_torch, _torch_reference  # pylint: disable=g-import-not-at-top
  torch, i3d = _torch_reference(top_heavy, width, 1, 0.0)
  _randomise_torch(torch, i3d, seed=3)
  i3d.logits = None  # AFSD builds InceptionI3d up to Mixed_5c
  nn, F = torch.nn, torch.nn.functional
  feat_t = frame_num // 4

  class Unit1D(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1):
      super().__init__()
      self.k, self.s = k, stride
      self.conv1d = nn.Conv1d(cin, cout, k, stride, padding=0, bias=True)

    def forward(self, x):
      t = x.shape[2]
      pad = max(self.k - self.s, 0) if t % self.s == 0 else max(self.k - t % self.s, 0)
      return self.conv1d(F.pad(x, [pad // 2, pad - pad // 2]))

  class Unit3D(nn.Module):  # padding='spatial_valid' with a (1, h, w) kernel: no padding at all
    def __init__(self, cin, cout, k):
      super().__init__()
      self.conv3d = nn.Conv3d(cin, cout, k, bias=True)

    def forward(self, x):
      return self.conv3d(x)

  def block(unit, cout):
    return nn.Sequential(unit, nn.GroupNorm(groups, cout), nn.ReLU())

  class ScaleExp(nn.Module):
    def __init__(self):
      super().__init__()
      self.scale = nn.Parameter(torch.FloatTensor([1.0]))

    def forward(self, x):
      return torch.exp(x * self.scale)

  class ProposalBranch(nn.Module):
    def __init__(self):
      super().__init__()
      self.cur_point_conv = block(Unit1D(c, p), p)
      self.lr_conv = block(Unit1D(c, 2 * p), 2 * p)
      self.roi_conv = block(Unit1D(p, p), p)
      self.proposal_conv = block(Unit1D(4 * p, c), c)

    def forward(self, feature, frame_level_feature, segments, frame_segments):
      fm_short = self.cur_point_conv(feature)
      feature = self.lr_conv(feature)
      prop_feature = _torch_bmp(torch, feature, segments)
      prop_roi_feature = self.roi_conv(_torch_bmp(torch, frame_level_feature, frame_segments))
      prop_feature = torch.cat([prop_roi_feature, prop_feature, fm_short], dim=1)
      return self.proposal_conv(prop_feature), feature

  class CoarsePyramid(nn.Module):
    def __init__(self, feat_channels, h4f, h5c):
      super().__init__()
      self.pyramids = nn.ModuleList(
          [block(Unit3D(feat_channels[0], c, [1, h4f, h4f]), c),
           block(Unit3D(feat_channels[1], c, [1, h5c, h5c]), c)]
          + [block(Unit1D(c, c, 3, 2), c) for _ in range(2, layer_num)])
      self.loc_heads = nn.ModuleList([ScaleExp() for _ in range(layer_num)])
      self.loc_tower = nn.Sequential(*[block(Unit1D(c, c, 3), c) for _ in range(2)])
      self.conf_tower = nn.Sequential(*[block(Unit1D(c, c, 3), c) for _ in range(2)])
      self.loc_head = Unit1D(c, 2, 3)
      self.conf_head = Unit1D(c, num_classes, 3)
      self.loc_proposal_branch = ProposalBranch()
      self.conf_proposal_branch = ProposalBranch()
      self.prop_loc_head = Unit1D(c, 2, 1)
      self.prop_conf_head = Unit1D(c, num_classes, 1)
      self.center_head = Unit1D(c, 1, 3)
      self.deconv = nn.Sequential(
          Unit1D(c, c, 3), nn.GroupNorm(groups, c), nn.ReLU(),
          Unit1D(c, c, 3), nn.GroupNorm(groups, c), nn.ReLU(),
          Unit1D(c, c, 1), nn.GroupNorm(groups, c), nn.ReLU())
      self.priors = []
      t = feat_t
      for _ in range(layer_num):
        self.priors.append(torch.Tensor([[(i + 0.5) / t] for i in range(t)]).view(-1, 1))
        t = t // 2

    def forward(self, feat_dict):
      pyramid_feats, locs, confs, centers, prop_locs, prop_confs = [], [], [], [], [], []
      x2, x1 = feat_dict["Mixed_5c"], feat_dict["Mixed_4f"]
      batch_num = x1.size(0)
      for i, conv in enumerate(self.pyramids):
        if i == 0:
          x = conv(x1).squeeze(-1).squeeze(-1)
        elif i == 1:
          x = conv(x2).squeeze(-1).squeeze(-1)
          x0 = pyramid_feats[-1]
          pyramid_feats[-1] = x0 + F.interpolate(x, x0.size()[2:], mode="nearest")
        else:
          x = conv(x)
        pyramid_feats.append(x)
      frame_level_feat = F.interpolate(pyramid_feats[0].unsqueeze(-1), [frame_num, 1]).squeeze(-1)
      frame_level_feat = self.deconv(frame_level_feat)
      start = frame_level_feat[:, :c // 2].permute(0, 2, 1)  # the official 256 is C / 2
      end = frame_level_feat[:, c // 2:].permute(0, 2, 1)
      for i, feat in enumerate(pyramid_feats):
        loc_feat = self.loc_tower(feat)
        conf_feat = self.conf_tower(feat)
        locs.append(self.loc_heads[i](self.loc_head(loc_feat)).view(batch_num, 2, -1)
                    .permute(0, 2, 1))
        confs.append(self.conf_head(conf_feat).view(batch_num, num_classes, -1).permute(0, 2, 1))
        t = feat.size(2)
        with torch.no_grad():
          segments = locs[-1] / frame_num * t
          priors = self.priors[i].expand(batch_num, t, 1)
          new_priors = torch.round(priors * t - 0.5)
          plen = segments[:, :, :1] + segments[:, :, 1:]
          in_plen = torch.clamp(plen / 4.0, min=1.0)
          out_plen = torch.clamp(plen / 10.0, min=1.0)
          l_segment = new_priors - segments[:, :, :1]
          r_segment = new_priors + segments[:, :, 1:]
          segments = torch.cat([
              torch.round(l_segment - out_plen), torch.round(l_segment + in_plen),
              torch.round(r_segment - in_plen), torch.round(r_segment + out_plen)], dim=-1)
          decoded = torch.cat([priors[:, :, :1] * frame_num - locs[-1][:, :, :1],
                               priors[:, :, :1] * frame_num + locs[-1][:, :, 1:]], dim=-1)
          plen = decoded[:, :, 1:] - decoded[:, :, :1] + 1.0
          in_plen = torch.clamp(plen / 4.0, min=1.0)
          out_plen = torch.clamp(plen / 10.0, min=1.0)
          frame_segments = torch.cat([
              torch.round(decoded[:, :, :1] - out_plen), torch.round(decoded[:, :, :1] + in_plen),
              torch.round(decoded[:, :, 1:] - in_plen), torch.round(decoded[:, :, 1:] + out_plen)],
              dim=-1)
        loc_prop_feat, loc_prop_feat_ = self.loc_proposal_branch(
            loc_feat, frame_level_feat, segments, frame_segments)
        conf_prop_feat, conf_prop_feat_ = self.conf_proposal_branch(
            conf_feat, frame_level_feat, segments, frame_segments)
        if i == 0:
          ndim = loc_prop_feat_.size(1) // 2
          start_loc_prop = loc_prop_feat_[:, :ndim].permute(0, 2, 1)
          end_loc_prop = loc_prop_feat_[:, ndim:].permute(0, 2, 1)
          start_conf_prop = conf_prop_feat_[:, :ndim].permute(0, 2, 1)
          end_conf_prop = conf_prop_feat_[:, ndim:].permute(0, 2, 1)
        prop_locs.append(self.prop_loc_head(loc_prop_feat).view(batch_num, 2, -1).permute(0, 2, 1))
        prop_confs.append(self.prop_conf_head(conf_prop_feat).view(batch_num, num_classes, -1)
                          .permute(0, 2, 1))
        centers.append(self.center_head(loc_prop_feat).view(batch_num, 1, -1).permute(0, 2, 1))
      return {
          "loc": torch.cat(locs, 1), "conf": torch.cat(confs, 1),
          "prop_loc": torch.cat(prop_locs, 1), "prop_conf": torch.cat(prop_confs, 1),
          "center": torch.cat(centers, 1)[..., 0], "priors": torch.cat(self.priors, 0)[:, 0],
          "start": start, "end": end, "start_loc_prop": start_loc_prop,
          "end_loc_prop": end_loc_prop, "start_conf_prop": start_conf_prop,
          "end_conf_prop": end_conf_prop,
      }

  class Backbone(nn.Module):
    def __init__(self):
      super().__init__()
      self._model = i3d

    def forward(self, x):
      feats = {}
      for name in i3d.order:
        x = getattr(i3d, name)(x)
        feats[name] = x
      return feats

  class BDNet(nn.Module):
    def __init__(self, h4f, h5c):
      super().__init__()
      chans = (round(256 * width) + round(320 * width) + 2 * round(128 * width),
               round(384 * width) + round(384 * width) + 2 * round(128 * width))
      self.coarse_pyramid_detection = CoarsePyramid(chans, h4f, h5c)
      self.backbone = Backbone()

    def forward(self, x):
      feats = self.backbone(x)
      return self.coarse_pyramid_detection(feats), feats

  return torch, BDNet


def _randomise_head(torch, head, seed):
  from torch_reference import randomize  # pylint: disable=g-import-not-at-top
  randomize(head, seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    # Distances of ~5-50 frames: boundary regions that span several steps on the levels and
    # several frames on the frame axis.
    head.loc_head.conv1d.bias.fill_(1.0)
    for scale in head.loc_heads:
      scale.scale.copy_(2.0 + torch.rand(1, generator=g))


@pytest.mark.torch
def test_parity_with_official_bdnet_through_the_converter():
  """A tiny AFSD checkpoint (official names, random weights) converts with the model inferred, and
  the converted Flax BDNet gives the PyTorch outputs (eval mode) on a 128-frame 32x32 clip."""
  pytest.importorskip("torch")
  frames, c, k = 128, 64, 5  # Mixed_4f 32 steps: the official six levels 32..1 are all valid
  torch, bdnet = _torch_bdnet(False, c, c, k, frames)
  net = bdnet(2, 1).eval()  # Mixed_4f 2x2, Mixed_5c 1x1 for a 32x32 clip
  _randomise_head(torch, net.coarse_pyramid_detection, seed=5)
  sd = net.state_dict()
  assert "coarse_pyramid_detection.loc_proposal_branch.lr_conv.1.weight" in sd
  assert "coarse_pyramid_detection.deconv.6.conv1d.weight" in sd
  assert "backbone._model.Mixed_5c.b3b.bn.running_var" in sd
  assert not any(".logits." in key for key in sd)
  loaded = convert.convert_state_dict(sd, tiny=True)
  assert loaded.model_name == "afsd" and not loaded.parts and not loaded.notes
  assert loaded.model_kwargs == {"backbone": "i3d", "num_classes": k, "channels": c,
                                 "proposal_channels": c, "tiny": True}
  assert loaded.input_shapes == [[1, 256, 32, 32, 3]]  # the crop read from the (1, 2, 2) kernel

  x = np.random.default_rng(0).normal(size=(1, frames, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want, want_feats = net(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy()))
  model = loaded.build()
  out, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(loaded.variables, x)
  for name in ("Mixed_4f", "Mixed_5c"):
    np.testing.assert_allclose(feats[name], want_feats[name].numpy().transpose(0, 2, 3, 4, 1),
                               rtol=TOL, atol=TOL, err_msg=name)
  assert set(out) == set(want)
  for name, w in want.items():
    np.testing.assert_allclose(out[name], w.numpy(), rtol=TOL, atol=TOL, err_msg=name)
  # Many regions span several steps (level 0 has 4 frames a step), so the pooling is exercised.
  assert np.median(np.asarray(out["loc"][0, :32]).sum(-1)) > 12.0


@pytest.mark.torch
def test_genkd_detection_student_converts_in_one_command(tmp_path):
  """GenKD's BDNet_student (AFSD on Top-I3D plus deconv1/Att_Head_5c and deconv2/Att_Head_4f),
  saved as its training script saves it, through the CLI."""
  pytest.importorskip("torch")
  import official_reference  # pylint: disable=g-import-not-at-top
  torch, bdnet = _torch_bdnet(True, 64, 64, 5, 64)
  sd = {k: v.numpy() for k, v in bdnet(2, 1).state_dict().items()}
  head5c = official_reference.AttentionModules(64, 32, 4, 1, 1)  # tiny Mixed_5c: 64 ch, 1x1
  # (Tiny Mixed_4f has 52 channels, which GroupNorm(32) cannot take; names and shapes are what
  # this test is about, so the 4f head gets 64.)
  head4f = official_reference.AttentionModules(64, 32, 8, 2, 2)
  sd.update({k: v.detach().numpy() for k, v in head5c.state_dict().items()})
  sd.update({k.replace("deconv1", "deconv2").replace("Att_Head_5c", "Att_Head_4f"):
             v.detach().numpy() for k, v in head4f.state_dict().items()})
  src = os.path.join(tmp_path, "BDNet_student-checkpoint-40.ckpt")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, src)
  dst = os.path.join(tmp_path, "converted")
  assert convert.main([src, dst, "--kwargs", '{"tiny": true}']) == 0
  conv = convert.load_converted(dst)
  assert conv.model_name == "afsd" and conv.model_kwargs["backbone"] == "top_i3d"
  assert not conv.notes and set(conv.parts) == {"attention_head", "attention_head_4f"}
  np.testing.assert_array_equal(
      conv.parts["attention_head_4f"].variables["params"]["linear"]["kernel"],
      sd["Att_Head_4f.3.weight"].T)
  np.testing.assert_array_equal(
      conv.variables["params"]["coarse_pyramid_detection"]["loc_heads_3"]["scale"],
      sd["coarse_pyramid_detection.loc_heads.3.scale"])
  assert convert.infer_model(sd) == "afsd"
  # Forced to a plain Top-I3D, the 4f branch is dropped with a note as before and the pyramid
  # has no place.
  with pytest.raises(convert.ConversionError, match="coarse_pyramid_detection"):
    convert.convert_state_dict(sd, "top_i3d", tiny=True)


@pytest.mark.torch
def test_official_size_checkpoint_converts():
  """AFSD's THUMOS14 BDNet (I3D, 21 classes, 512 channels, 96x96 crop): every name and shape."""
  pytest.importorskip("torch")
  _, bdnet = _torch_bdnet(False, 512, 512, 21, 256, width=1.0)
  sd = {k: v.numpy() for k, v in bdnet(6, 3).state_dict().items()}
  conv = convert.convert_state_dict(sd)
  assert conv.model_name == "afsd" and not conv.parts and not conv.notes
  assert conv.model_kwargs == {"backbone": "i3d", "num_classes": 21}
  assert conv.input_shapes == [[1, 256, 96, 96, 3]]
  head = conv.variables["params"]["coarse_pyramid_detection"]
  np.testing.assert_array_equal(head["pyramids_0"]["conv3d"]["kernel"],
                                sd["coarse_pyramid_detection.pyramids.0.0.conv3d.weight"]
                                .transpose(2, 3, 4, 1, 0))
  np.testing.assert_array_equal(head["deconv_2"]["gn"]["bias"],
                                sd["coarse_pyramid_detection.deconv.7.bias"])
  assert _numel(conv.variables) == sum(v.size for k, v in sd.items()
                                       if not k.endswith("num_batches_tracked"))


# ---------------------------------------------------------------------------------------------
# SSL triplet features, training, freezing.


def test_ssl_triplet_features_match_a_numpy_loop():
  rng = np.random.default_rng(1)
  feats = {"frame_level": rng.normal(size=(2, 64, 8)).astype(np.float32),
           "loc_prop_boundary": rng.normal(size=(2, 16, 6)).astype(np.float32),
           "conf_prop_boundary": rng.normal(size=(2, 16, 6)).astype(np.float32)}
  proposals = np.array([[[10, 30], [31, 50], [12, 29]], [[3.5, 7.2], [0, 63], [40, 41]]],
                       np.float32)
  anchor, positive, negative = afsd.ssl_triplet_features(feats, proposals)
  for i, (name, scale) in enumerate(afsd.SSL_FEATURES):
    regions = np.zeros((2, 3, 4), np.float32)
    for b in range(2):
      for s in range(3):
        l, r = proposals[b, s]
        n = r - l + 1.0
        inner, outer = max(n / 4.0, 1.0), max(n / 10.0, 1.0)
        regions[b, s] = np.round([l - outer, l + inner, r - inner, r + outer])
    pooled, _ = np_boundary_pool(feats[name], regions / scale)
    d = feats[name].shape[-1] // 2
    np.testing.assert_allclose(anchor[i], pooled[:, 0, d:], err_msg=name)
    np.testing.assert_allclose(positive[i], pooled[:, 1, :d], err_msg=name)
    np.testing.assert_allclose(negative[i], pooled[:, 2, :d], err_msg=name)
  with pytest.raises(ValueError, match=r"\[B, 3, 2\]"):
    afsd.ssl_triplet_features(feats, proposals[:, :2])


def test_frozen_bn_affine_mask_and_optimizer():
  model = afsd.afsd(tiny=True, num_classes=5)
  variables, _ = _abstract(model, (1, 32, 32, 32, 3))
  params = jax.tree.map(lambda a: np.ones(a.shape, a.dtype), variables["params"])
  mask = afsd.frozen_bn_affine_mask(params)
  frozen = [jax.tree_util.keystr(p) for p, f in jax.tree_util.tree_leaves_with_path(mask) if f]
  assert len(frozen) == 2 * I3D_BN_UNITS
  assert all("['backbone']" in p and "['bn']" in p for p in frozen)
  # The head's GroupNorm scale / bias stay trainable.
  assert not mask["coarse_pyramid_detection"]["deconv_0"]["gn"]["scale"]

  def first_update(tx):  # gradient = params = 1: every trained parameter gets a nonzero update
    return jax.device_get(jax.jit(lambda p: tx.update(p, tx.init(p), p)[0])(params))

  tx = afsd.freeze_bn_affine(optax.chain(optax.add_decayed_weights(1e-3), optax.adam(1e-2)), model)
  for path, u in jax.tree_util.tree_leaves_with_path(first_update(tx)):
    frozen_leaf = jax.tree_util.keystr(path) in frozen
    assert bool(np.all(u == 0)) == frozen_leaf, jax.tree_util.keystr(path)
  plain = afsd.freeze_bn_affine(optax.sgd(1.0), afsd.afsd(tiny=True, freeze_bn_affine=False))
  assert all(np.all(u != 0) for u in jax.tree.leaves(first_update(plain)))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _moved(new, old):
  return jax.tree.map(lambda a, b: bool(np.any(a != b)), new, old)


def test_head_jit_and_grad_on_afsd_losses():
  """The head under jit and grad with AFSD's losses: finite, every head parameter gets a gradient
  (ScaleExp scales, both proposal branches and the deconv included)."""
  head = afsd.CoarsePyramid(num_classes=3, channels=64, proposal_channels=64, num_levels=3)
  rng = np.random.default_rng(0)
  feats = {"Mixed_4f": np.maximum(rng.normal(size=(2, 8, 2, 2, 52)), 0).astype(np.float32),
           "Mixed_5c": np.maximum(rng.normal(size=(2, 4, 1, 1, 64)), 0).astype(np.float32)}
  params = _numpy_variables(jax.eval_shape(lambda f: head.init(jax.random.key(0), f), feats))
  gt = np.array([[[0.2, 0.5], [0.6, 0.9]], [[0.1, 0.8], [0.0, 0.0]]], np.float32)
  labels = np.array([[1, 2], [2, 1]], np.int32)
  masks = (rng.uniform(size=(2, 32, 2)) > 0.8).astype(np.float32)

  def loss_fn(params, feats):
    out, _ = head.apply(params, feats)
    terms = losses.detection.multisegment_loss(
        out["loc"], out["conf"], out["prop_loc"], out["prop_conf"], out["center"], out["priors"],
        gt, labels, clip_length=32)
    bce = sum(jnp.mean(losses.detection.boundary_bce_loss(out[k], masks[..., i]))
              for i, k in enumerate(("start", "end")))
    bce_prop = sum(jnp.mean(losses.detection.boundary_bce_loss(out[k], masks[:, ::4, i % 2]))
                   for i, k in enumerate(("start_loc_prop", "end_loc_prop", "start_conf_prop",
                                          "end_conf_prop")))
    return sum(terms.values()) + bce + 0.1 * bce_prop

  loss, grads = jax.device_get(jax.jit(jax.value_and_grad(loss_fn))(params, feats))
  assert np.isfinite(loss)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, jax.tree_util.keystr(path)


def test_freeze_bn_train_step():
  """A jitted Adam step through the backbone in train mode: BatchNorm statistics unchanged
  (freeze_bn) and BatchNorm scale / bias unchanged (freeze_bn_affine), the convs moved; without
  freeze_bn the same clip updates the statistics."""
  model = afsd.afsd(tiny=True, num_classes=3, num_levels=2)
  rng = np.random.default_rng(0)
  clip = rng.uniform(-1, 1, (2, 16, 32, 32, 3)).astype(np.float32)
  variables = _numpy_variables(_abstract(model, clip.shape)[0])
  params, stats = variables["params"], variables["batch_stats"]  # random running statistics
  # Positive BatchNorm shifts keep the tiny-width units alive under ReLU, so every conv learns.
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: np.abs(a) + 0.3 if "'bn']['bias'" in jax.tree_util.keystr(p) else a, params)
  tx = afsd.freeze_bn_affine(optax.adam(1e-3), model)

  def loss_fn(params):
    feats, updates = model.apply({"params": params, "batch_stats": stats}, clip, train=True,
                                 mutable=["batch_stats"], method="extract_features")
    return (jnp.mean(jnp.square(feats["Mixed_4f"])) + jnp.mean(feats["Mixed_5c"]),
            updates["batch_stats"])

  @jax.jit
  def step(params):
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), new_stats, loss

  # Everything back to numpy at once: eager JAX ops on ~250 leaves would compile ~250 kernels.
  new_params, new_stats, loss = jax.device_get(step(params))
  assert np.isfinite(loss)
  jax.tree.map(np.testing.assert_array_equal, new_stats, stats)
  moved = jax.tree.leaves(_moved(new_params["backbone"], params["backbone"]))
  frozen = jax.tree.leaves(afsd.frozen_bn_affine_mask(params)["backbone"])
  assert sum(frozen) == 2 * I3D_BN_UNITS and not any(m for m, f in zip(moved, frozen) if f)
  assert all(m for m, f in zip(moved, frozen) if not f)  # every conv kernel moved

  unfrozen = afsd.afsd(tiny=True, num_classes=3, num_levels=2, freeze_bn=False)
  _, updates = jax.jit(lambda v, x: unfrozen.apply(
      v, x, train=True, mutable=["batch_stats"], method="extract_features"))(
          {"params": params, "batch_stats": stats}, clip)
  mean = ("backbone", "Mixed_5c", "b0", "bn", "mean")
  assert not np.allclose(_get(updates["batch_stats"], mean), _get(stats, mean))
  # bn_momentum m: new = m old + (1 - m) batch. Two models that differ only in m see the same
  # batch statistics b, so (new_1 - old) / (new_2 - old) = (1 - m_1) / (1 - m_2).
  fast = afsd.afsd(tiny=True, num_classes=3, num_levels=2, freeze_bn=False, bn_momentum=0.9)
  _, fast_updates = jax.jit(lambda v, x: fast.apply(
      v, x, train=True, mutable=["batch_stats"], method="extract_features"))(
          {"params": params, "batch_stats": stats}, clip)
  step_default = _get(updates["batch_stats"], mean) - _get(stats, mean)
  step_fast = _get(fast_updates["batch_stats"], mean) - _get(stats, mean)
  np.testing.assert_allclose(step_fast, step_default * (0.1 / 0.01), rtol=1e-3, atol=1e-6)


def test_init_schemes():
  """'afsd': Glorot-uniform kernels and zero biases on every head conv; 'genkd': N(0, 0.01) on the
  towers, heads and proposal branches; GroupNorm 1 / 0 and ScaleExp 1 in both."""
  feats = {"Mixed_4f": np.zeros((1, 4, 2, 2, 32), np.float32),
           "Mixed_5c": np.zeros((1, 2, 1, 1, 32), np.float32)}
  got = {}
  for scheme in ("afsd", "genkd"):
    head = afsd.CoarsePyramid(num_classes=3, channels=64, proposal_channels=64, num_levels=2,
                              init_scheme=scheme)
    got[scheme] = jax.device_get(jax.jit(lambda f, h=head: h.init(jax.random.key(0), f))(feats))
  for scheme, variables in got.items():
    p = variables["params"]
    tower = p["loc_tower_0"]["conv1d"]["kernel"]  # [3, 64, 64]
    deconv = p["deconv_0"]["conv1d"]["kernel"]  # Glorot in both
    limit = math.sqrt(6.0 / (3 * 64 + 3 * 64))  # fan_in = fan_out = 3 * 64
    assert limit >= np.abs(deconv).max() > 0.9 * limit, scheme
    if scheme == "afsd":
      assert np.abs(tower).max() <= limit and np.std(tower) > 0.5 * limit / math.sqrt(3)
    else:
      assert abs(np.std(tower) - 0.01) < 0.001
      assert abs(np.std(p["conf_proposal_branch"]["lr_conv"]["conv1d"]["kernel"]) - 0.01) < 0.002
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
      name = jax.tree_util.keystr(path)
      if name.endswith("['bias']"):
        assert np.all(leaf == 0), name
      if "['gn']['scale']" in name or "loc_heads" in name:
        assert np.all(leaf == 1), name
