"""boundary_max_pooling against a NumPy transcription of the CUDA kernel's loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models.boundary_pooling import boundary_max_pooling


def np_boundary_pool(x, segments):
  """Forward and argmax of AFSD's kernel, one (b, k, c) thread at a time; x is [B, T, C]."""
  b_, t_, c_ = x.shape
  s_ = segments.shape[1]
  out = np.zeros((b_, s_, c_), x.dtype)
  arg = np.zeros((b_, s_, c_), np.int64)
  for n in range(b_):
    for k in range(s_):
      for c in range(c_):
        seg_type = c // (c_ // 2)
        l = int(segments[n, k, 2 * seg_type])  # C's static_cast<int> truncates
        r = int(segments[n, k, 2 * seg_type + 1])
        l = min(max(0, l), t_ - 1)
        r = min(max(0, r), t_ - 1)
        best, best_i = x[n, l, c], l
        for i in range(l + 1, r + 1):
          if x[n, i, c] > best:
            best, best_i = x[n, i, c], i
        out[n, k, c] = best
        arg[n, k, c] = best_i
  return out, arg


def np_boundary_pool_grad(x, segments, cotangent):
  _, arg = np_boundary_pool(x, segments)
  grad = np.zeros_like(x)
  b_, s_, c_ = cotangent.shape
  for n in range(b_):
    for k in range(s_):
      for c in range(c_):
        grad[n, arg[n, k, c], c] += cotangent[n, k, c]  # atomicAdd
  return grad


def _random_case(seed, b=2, t=12, c=6, s=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, t, c)).astype(np.float32)
  # Non-integer, negative, past-the-end and reversed bounds all occur.
  segments = rng.uniform(-3.0, t + 3.0, size=(b, s, 4)).astype(np.float32)
  return x, segments


@pytest.mark.parametrize("seed,t", [(0, 12), (1, 16), (2, 1), (3, 37)])
def test_forward_matches_kernel_loop(seed, t):
  x, segments = _random_case(seed, t=t)
  want, _ = np_boundary_pool(x, segments)
  got = boundary_max_pooling(jnp.asarray(x), jnp.asarray(segments))
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), want)


def test_hand_worked_regions_and_rounding():
  # T=5, C=2: channel 0 reads the start region, channel 1 the end region.
  x = np.array([[[1.0, 10.0], [5.0, 20.0], [3.0, 30.0], [4.0, 40.0], [2.0, 50.0]]], np.float32)
  segments = np.array([[
      [0.0, 1.9, 3.0, 3.0],  # start [0, 1] -> max(1, 5) = 5; end [3, 3] -> 40
      [-0.7, 0.0, 9.0, 12.0],  # start [0, 0] -> 1; end clipped to [4, 4] -> 50
      [3.0, 1.0, 2.0, 0.0],  # reversed: start -> x[3] = 4, end -> x[2] = 30
  ]], np.float32)
  got = np.asarray(boundary_max_pooling(jnp.asarray(x), jnp.asarray(segments)))
  np.testing.assert_array_equal(got[0], [[5.0, 40.0], [1.0, 50.0], [4.0, 30.0]])


def test_integer_segments_and_dtype_kept():
  x, segments = _random_case(3)
  seg_int = np.round(segments).astype(np.int32)
  got = boundary_max_pooling(jnp.asarray(x, jnp.bfloat16), jnp.asarray(seg_int))
  assert got.dtype == jnp.bfloat16
  want, _ = np_boundary_pool(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32),
                             seg_int.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(got, np.float32), want)


@pytest.mark.parametrize("seed", [0, 4])
def test_gradient_goes_to_the_argmax(seed):
  x, segments = _random_case(seed)
  cot = np.random.default_rng(seed + 100).normal(size=(2, 5, 6)).astype(np.float32)

  def f(x_):
    return jnp.sum(boundary_max_pooling(x_, jnp.asarray(segments)) * cot)

  got = jax.grad(f)(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), np_boundary_pool_grad(x, segments, cot),
                             rtol=1e-6, atol=1e-6)


def test_gradient_of_a_tie_goes_to_the_first_maximum():
  x = np.array([[[0.0, 0.0], [7.0, 1.0], [7.0, 1.0], [7.0, 1.0]]], np.float32)
  segments = np.array([[[0.0, 3.0, 2.0, 3.0]]], np.float32)
  g = jax.grad(lambda x_: boundary_max_pooling(x_, jnp.asarray(segments)).sum())(jnp.asarray(x))
  want = np.zeros_like(x)
  want[0, 1, 0] = 1.0  # first 7 in [0, 3]
  want[0, 2, 1] = 1.0  # first 1 in [2, 3]
  np.testing.assert_array_equal(np.asarray(g), want)


def test_jit_and_vmap_agree_with_eager():
  x, segments = _random_case(5)
  eager = boundary_max_pooling(jnp.asarray(x), jnp.asarray(segments))
  jitted = jax.jit(boundary_max_pooling)(jnp.asarray(x), jnp.asarray(segments))
  vmapped = jax.vmap(lambda a, s: boundary_max_pooling(a[None], s[None])[0])(
      jnp.asarray(x), jnp.asarray(segments))
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
  np.testing.assert_array_equal(np.asarray(vmapped), np.asarray(eager))
  # Segments are an input of the jitted function, not a constant: new segments, new answer.
  want, _ = np_boundary_pool(x, segments[:, ::-1])
  np.testing.assert_array_equal(
      np.asarray(jax.jit(boundary_max_pooling)(jnp.asarray(x), jnp.asarray(segments[:, ::-1]))),
      want)


def test_no_gradient_into_segments():
  x, segments = _random_case(6)
  g = jax.grad(lambda s: boundary_max_pooling(jnp.asarray(x), s).sum())(jnp.asarray(segments))
  np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize(
    "x_shape, seg_shape, match",
    [((2, 8, 5), (2, 3, 4), "even channel"),
     ((2, 8, 4), (2, 3, 2), r"\[B, S, 4\]"),
     ((8, 4), (2, 3, 4), r"\[B, T, C\]"),
     ((2, 8, 4), (3, 3, 4), "batch sizes")],
)
def test_bad_shapes_raise_one_clear_line(x_shape, seg_shape, match):
  with pytest.raises(ValueError, match=match):
    boundary_max_pooling(jnp.zeros(x_shape), jnp.zeros(seg_shape))
