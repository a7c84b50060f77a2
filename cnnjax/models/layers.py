"""Parameter-free layers and the names configs use for activations and norms.

Everything here but Dropout (it draws random masks) and BatchNorm (it keeps running statistics) is a pure function
of arrays (or of names), so it is property-tested directly.
Pooling follows the Caffe/PyTorch arithmetic the papers' layer tables were computed with.
"""

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def output_size(n: int, window: int, stride: int = 1, padding: int = 0, ceil_mode: bool = False) -> int:
  """Length of a conv or pool output along one axis (PyTorch's formula, ceil mode included).

  In ceil mode the last window must still start inside the input or its left padding, as in PyTorch
  and Caffe: this is what gives GoogLeNet its 112 -> 56 -> 28 -> 14 -> 7 maps.
  """
  span = n + 2 * padding - window
  out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
  if ceil_mode and (out - 1) * stride >= n + padding:
    out -= 1
  return out


def max_pool(x, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
  """Max-pool NHWC maps with explicit padding and optional ceil mode.

  A map smaller than the window still gives one output (the max over what is there), so networks
  built for 224x224 also run on 32x32 inputs; at the papers' sizes nothing changes.
  """
  pads = [(0, 0)]
  for axis in (1, 2):
    n = x.shape[axis]
    out = max(output_size(n, window, stride=stride, padding=padding, ceil_mode=ceil_mode), 1)
    high = (out - 1) * stride + window - n - padding
    if high < 0:  # floor mode leaves trailing rows unused: crop them (negative padding breaks the gradient)
      x = lax.slice_in_dim(x, 0, n + high, axis=axis)
      high = 0
    pads.append((padding, high))
  pads.append((0, 0))
  # the initial value in x's dtype: a Python float would become float64 where JAX's x64 mode is on
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def adaptive_avg_pool(x, grid: int):
  """Average NHWC maps onto a grid x grid output with PyTorch's AdaptiveAvgPool2d windows.

  Cell i covers rows floor(i*H/grid) .. ceil((i+1)*H/grid); a map smaller than the grid is
  replicated. A map already of the grid's size is returned unchanged.
  """
  h, w = x.shape[1:3]
  if (h, w) == (grid, grid):
    return x

  def cells(n):
    return [(i * n // grid, -(-(i + 1) * n // grid)) for i in range(grid)]

  rows = [jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in cells(w)], axis=1) for r0, r1 in cells(h)]
  return jnp.stack(rows, axis=1)


def global_avg_pool(x):
  return x.mean(axis=(1, 2))


def local_response_norm(x, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
  """AlexNet's local response normalisation across channels (NHWC).

  b_i = a_i / (k + alpha * sum_{j in the size maps around i} a_j^2) ** beta, with alpha NOT divided
  by size (AlexNet paper, section 3.3). Caffe and PyTorch divide alpha by size: pass alpha / size to
  reproduce them. The defaults are the AlexNet paper's (k=2, n=5, alpha=1e-4, beta=0.75).
  """
  squares = lax.reduce_window(
    x * x,
    np.array(0, x.dtype),
    lax.add,
    (1, 1, 1, size),
    (1, 1, 1, 1),
    ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)),
  )
  return x / (k + alpha * squares) ** beta


class Dropout(nn.Module):
  """Dropout whose mask does not depend on how the batch is split over devices or hosts.

  With `axis_name` (inside a pmap over it), every device draws the mask of the whole global batch from the
  same key and keeps its own rows, so each example's mask depends only on the key (the seed, the step, the
  layer) and on its place in the global batch: one device and eight train alike, and devices still drop
  different units for different examples. Without it, the mask of the local batch (as flax's nn.Dropout).
  """

  rate: float
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep, key, rows = 1.0 - self.rate, self.make_rng("dropout"), x.shape[0]
    if self.axis_name is None:
      mask = jax.random.bernoulli(key, keep, x.shape)
    else:
      devices, index = lax.psum(1, self.axis_name), lax.axis_index(self.axis_name)
      whole = jax.random.bernoulli(key, keep, (devices * rows, *x.shape[1:]))
      mask = lax.dynamic_slice_in_dim(whole, index * rows, rows)
    return lax.select(mask, x / keep, jnp.zeros_like(x))


def check_sizes(**sizes):
  """Raise ValueError unless every named size (an int, or a sequence of them: widths, stage lengths) is a
  positive integer; a layer of 0 or -3 channels would fail deep inside the init with an XLA shape error."""
  for name, value in sizes.items():
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
      raise ValueError(f"{name} must be positive integers, not {value!r}")


def scaled_tanh(x):
  """LeNet-5's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (LeCun et al. 1998, appendix A)."""
  return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


ACTIVATIONS: dict[str, Callable] = {
  "relu": nn.relu,
  "tanh": jnp.tanh,
  "sigmoid": nn.sigmoid,
  "scaled_tanh": scaled_tanh,
  "leaky_relu": nn.leaky_relu,
  "gelu": nn.gelu,
}


class BatchNorm(nn.Module):
  """Batch normalisation (Ioffe & Szegedy 2015) as the papers' Caffe and Torch models and PyTorch keep it.

  Training normalises by the batch's own mean and (biased) variance, and the running statistics average the
  batch's mean and its *unbiased* variance, n/(n-1) times the biased one (the paper's Algorithm 2, step 10;
  Caffe's and PyTorch's BatchNorm): flax's nn.BatchNorm keeps the biased one, and a step of it differs from
  PyTorch's. n counts every value a channel's statistics are over: the global batch (over `axis_name`'s devices)
  times the map's positions. `momentum` weighs the old running value (PyTorch's momentum 0.1 is 0.9 here).
  Parameters 'scale' and 'bias', statistics 'mean' and 'var' in the 'batch_stats' collection, as flax's.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  scale_init: Callable = nn.initializers.ones  # zeros: a residual branch that starts as nothing (Goyal et al.)

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # statistics in float32 at least (bfloat16 runs)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      moments = jnp.stack([wide.mean(axes), jnp.square(wide).mean(axes)])  # one all-reduce for both
      count = math.prod(x.shape[:-1])
      if self.axis_name is not None:
        moments, count = lax.pmean(moments, self.axis_name), count * lax.psum(1, self.axis_name)
      mean, var = moments[0], jnp.maximum(moments[1] - jnp.square(moments[0]), 0.0)
      if not self.is_initializing():
        keep = self.momentum
        running_mean.value = keep * running_mean.value + (1 - keep) * mean
        running_var.value = keep * running_var.value + (1 - keep) * var * (count / jnp.maximum(count - 1, 1))
    y = (wide - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(jnp.result_type(x, scale))


# BatchNorm as torchvision and the papers' Caffe models use it (PyTorch's momentum 0.1, epsilon 1e-5).
BATCH_NORM = functools.partial(BatchNorm, momentum=0.9, epsilon=1e-5)


def activation(name: str) -> Callable:
  """The activation function a config names, e.g. 'relu' or 'sigmoid'."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


def conv_norm(
  name: str, train: bool, choices=("batchnorm", "none"), axis_name: str | None = None, epsilon: float = 1e-5
):
  """The norm a conv unit applies after its convolution, or None.

  'lrn' (where a model allows it) is not a per-conv norm: the model places LRN where its paper does,
  so here it means no per-conv norm. With `axis_name`, BatchNorm averages its batch statistics over that
  pmap axis in training, so results do not depend on how the batch is split over devices.
  """
  if name not in choices:
    raise ValueError(f"unknown norm {name!r} for this model; valid: {', '.join(choices)}")
  if name == "batchnorm":
    return functools.partial(BATCH_NORM, use_running_average=not train, axis_name=axis_name, epsilon=epsilon)
  return None
