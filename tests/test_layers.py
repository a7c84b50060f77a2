"""Property tests on the parameter-free layers: pooling arithmetic, max-pool, adaptive pooling, LRN."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax.models.layers import BatchNorm, adaptive_avg_pool, local_response_norm, max_pool, output_size

geometry = st.tuples(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3)).filter(
  lambda g: g[3] <= g[1] // 2 and g[0] + 2 * g[3] >= g[1]
)  # PyTorch: pad <= window/2, window fits


@given(geometry)
def test_floor_size_matches_xla_convolution(g):
  n, k, s, p = g
  x = jnp.zeros((1, n, 1, 1))
  w = jnp.zeros((k, 1, 1, 1))
  y = jax.eval_shape(
    lambda x, w: lax.conv_general_dilated(x, w, (s, 1), ((p, p), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
    x,
    w,
  )
  assert output_size(n, k, s, p) == y.shape[1]


@given(geometry)
def test_ceil_mode_adds_at_most_the_partial_window(g):
  n, k, s, p = g
  floor, ceil = output_size(n, k, s, p), output_size(n, k, s, p, ceil_mode=True)
  assert floor <= ceil <= floor + 1
  assert (ceil == floor) == ((n + 2 * p - k) % s == 0 or (floor * s >= n + p))
  assert (ceil - 1) * s < n + p  # every window starts inside the input or its left padding


def test_googlenet_and_torchvision_ceil_mode_sizes():
  sizes = [112]
  for _ in range(4):
    sizes.append(output_size(sizes[-1], 3, 2, ceil_mode=True))
  assert sizes == [112, 56, 28, 14, 7]  # floor mode would give 55, 27, 13, 6
  assert output_size(112, 3, 2) == 55
  assert output_size(5, 2, 2, padding=1, ceil_mode=True) == 3  # a 4th window would start in the right padding


def _reference_max_pool(x, k, s, p, out):
  """Direct definition: the max over each window's cells that lie inside the input."""
  n = x.shape[0]
  res = np.empty((out, out))
  for i in range(out):
    for j in range(out):
      r0, c0 = i * s - p, j * s - p
      res[i, j] = x[max(r0, 0) : min(r0 + k, n), max(c0, 0) : min(c0 + k, n)].max()
  return res


@settings(max_examples=40)
@given(geometry, st.booleans(), st.integers(0, 2**31 - 1))
def test_max_pool_values_and_shape(g, ceil_mode, seed):
  n, k, s, p = g
  x = np.random.default_rng(seed).normal(size=(n, n)).astype(np.float32)
  y = np.asarray(max_pool(jnp.asarray(x)[None, :, :, None], k, s, p, ceil_mode))[0, :, :, 0]
  out = max(output_size(n, k, s, p, ceil_mode), 1)
  assert y.shape == (out, out)
  np.testing.assert_array_equal(y, _reference_max_pool(x, k, s, p, out))


def test_max_pool_on_a_map_smaller_than_its_window_keeps_one_output():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  assert max_pool(x, 3, 2).reshape(()) == 3.0


@settings(max_examples=12)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_adaptive_pool_equals_block_mean_when_the_grid_divides(grid, block, seed):
  n = grid * block
  x = jax.random.normal(jax.random.key(seed), (2, n, n, 3))
  expected = x.reshape(2, grid, block, grid, block, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(adaptive_avg_pool(x, grid), expected, rtol=1e-5, atol=1e-6)


def test_adaptive_pool_windows_follow_pytorch():
  # 14 -> 4: PyTorch's windows are [0:4], [3:7], [7:11], [10:14] (docs/reference.md, section 4)
  x = jnp.arange(14.0)[None, :, None, None] * jnp.ones((1, 1, 14, 1))
  y = adaptive_avg_pool(x, 4)[0, :, 0, 0]
  np.testing.assert_allclose(y, [1.5, 4.5, 8.5, 11.5])
  small = jnp.full((1, 1, 1, 2), 5.0)  # a map smaller than the grid is replicated
  assert adaptive_avg_pool(small, 6).shape == (1, 6, 6, 2)


def test_lrn_by_hand():
  # one channel: b = a / (k + alpha a^2)^beta
  a = 3.0
  np.testing.assert_allclose(
    local_response_norm(jnp.full((1, 1, 1, 1), a))[0, 0, 0, 0], a / (2 + 1e-4 * 9) ** 0.75, rtol=1e-6
  )
  # channel i sums squares over channels i-2..i+2 (size 5), alpha not divided by the size
  x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(1, 1, 1, 6)
  squares = np.array([1, 4, 9, 16, 25, 36.0])
  sums = [squares[max(i - 2, 0) : i + 3].sum() for i in range(6)]
  expected = np.arange(1.0, 7.0) / (2 + 1e-4 * np.array(sums)) ** 0.75
  np.testing.assert_allclose(local_response_norm(x)[0, 0, 0], expected, rtol=1e-6)


@given(st.floats(0.5, 3.0), st.floats(0.1, 1.0), st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_lrn_without_alpha_only_scales(k, beta, seed):
  x = jax.random.normal(jax.random.key(seed), (1, 3, 3, 8))
  np.testing.assert_allclose(local_response_norm(x, alpha=0.0, k=k, beta=beta), x / k**beta, rtol=1e-5)


def test_batchnorm_by_hand_keeps_the_unbiased_variance():
  """Training normalises by the batch's biased variance; the running variance averages in the unbiased one, n/(n-1)
  times it (Ioffe & Szegedy 2015, Algorithm 2; Caffe's and PyTorch's BatchNorm), with PyTorch's momentum 0.1."""
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 3, 3, 2))
  values, n = x.reshape(-1, 2), 4 * 3 * 3
  norm = BatchNorm(momentum=0.9, epsilon=1e-5)
  variables = norm.init(jax.random.key(0), x)
  y, updates = norm.apply(variables, x, mutable=["batch_stats"])
  stats = updates["batch_stats"]
  np.testing.assert_allclose(stats["mean"], 0.9 * 0 + 0.1 * values.mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 * 1 + 0.1 * values.var(0) * n / (n - 1), rtol=1e-5)
  np.testing.assert_allclose(y, (x - values.mean(0)) / np.sqrt(values.var(0) + 1e-5), rtol=1e-4, atol=1e-5)
  # synchronised over two devices, each with half the batch: the statistics of the whole batch (n counts both)
  halves = jax.pmap(lambda v, x: norm.clone(axis_name="i").apply(v, x, mutable=["batch_stats"]), "i", in_axes=(None, 0))
  y2, updates2 = halves(variables, x.reshape(2, 2, 3, 3, 2))
  np.testing.assert_allclose(np.asarray(y2).reshape(x.shape), y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updates2["batch_stats"]["var"][0], stats["var"], rtol=1e-6)
