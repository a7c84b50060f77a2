"""The shared blocks every architecture is composed of.

Each block takes its convolution (`conv`, a partial of `nn.Conv` carrying bias and init), its norm
(`norm`, a partial of `layers.BatchNorm` or None) and its activation (`act`) injected, so a network
switches all of them in one place: a whole ResNet turns sigmoid, or loses its BatchNorm, with one
option.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.models.layers import max_pool

ModuleDef = Any


class ConvUnit(nn.Module):
  """conv -> norm -> act; padding defaults to kernel_size // 2 on each side (Caffe/PyTorch style)."""

  features: int
  kernel_size: int
  conv: ModuleDef
  norm: ModuleDef | None = None
  act: Callable | None = None
  strides: int = 1
  padding: int | None = None
  groups: int = 1

  @nn.compact
  def __call__(self, x):
    pad = self.kernel_size // 2 if self.padding is None else self.padding
    x = self.conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      strides=self.strides,
      padding=((pad, pad), (pad, pad)),
      feature_group_count=self.groups,
      name="conv",
    )(x)
    if self.norm is not None:
      x = self.norm(name="norm")(x)
    return x if self.act is None else self.act(x)


class Inception(nn.Module):
  """GoogLeNet's inception module (Szegedy et al. 2014, Fig. 2).

  `reduced` (Fig. 2b, the network's): 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1 projection.
  `naive` (Fig. 2a): 1x1 | 3x3 | 5x5 | 3x3 max-pool, all on the full input; the pool branch passes every
  input channel through, so the output widens module after module.
  """

  c1: int
  c3_reduce: int
  c3: int
  c5_reduce: int
  c5: int
  pool_proj: int
  conv: ModuleDef
  norm: ModuleDef | None
  act: Callable
  variant: str = "reduced"
  c5_kernel: int = 5  # torchvision's GoogLeNet uses 3 here (a known bug kept for its weights)

  @nn.compact
  def __call__(self, x):
    if self.variant not in ("reduced", "naive"):
      raise ValueError(f"unknown inception variant {self.variant!r}; valid: naive, reduced")
    reduced = self.variant == "reduced"
    unit = functools.partial(ConvUnit, conv=self.conv, norm=self.norm, act=self.act)
    b1 = unit(self.c1, 1, name="1x1")(x)
    b3 = unit(self.c3_reduce, 1, name="3x3_reduce")(x) if reduced else x
    b3 = unit(self.c3, 3, name="3x3")(b3)
    b5 = unit(self.c5_reduce, 1, name="5x5_reduce")(x) if reduced else x
    b5 = unit(self.c5, self.c5_kernel, name="5x5")(b5)
    bp = max_pool(x, 3, 1, padding=1)
    if reduced:
      bp = unit(self.pool_proj, 1, name="pool_proj")(bp)
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)


def inception_macs(
  height: int, width: int, in_channels: int, spec: Sequence[int], variant: str, c5_kernel: int = 5
) -> int:
  """Multiply-adds of one inception module on a height x width x in_channels input.

  `spec` is the paper's Table 1 row (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj). The
  difference between the two variants is the lecture's "computationally heavy" vs "less channels":
  the 3x3 and 5x5 convolutions see in_channels inputs (naive) or only their reductions (reduced).
  """
  c1, c3r, c3, c5r, c5, pool_proj = spec
  k5 = c5_kernel * c5_kernel
  if variant == "naive":
    per_pixel = in_channels * (c1 + 9 * c3 + k5 * c5)
  else:
    per_pixel = in_channels * (c1 + c3r + c5r + pool_proj) + 9 * c3r * c3 + k5 * c5r * c5
  return height * width * per_pixel


def zero_pad_shortcut(x, features: int, strides: int):
  """The ResNet paper's option-A shortcut: strided identity, extra channels filled with zeros.

  It adds no parameters, which is why a CIFAR ResNet and its plain twin have equal counts.
  """
  x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) if extra else x


def branch_layers(bottleneck: bool, width: int, strides: int, stride_in: str) -> list[tuple[int, int, int]]:
  """(features, kernel, stride) of each conv on a residual branch.

  Basic: two 3x3. Bottleneck: 1x1, 3x3, 1x1 (4x width); `v1` strides the first 1x1 (the paper and its
  Caffe models), `v1.5` strides the 3x3 (torchvision, NVIDIA): same parameters, more multiply-adds.
  """
  if not bottleneck:
    return [(width, 3, strides), (width, 3, 1)]
  if stride_in not in ("v1", "v1.5"):
    raise ValueError(f"unknown stride placement {stride_in!r}; valid: v1, v1.5")
  first, middle = (strides, 1) if stride_in == "v1" else (1, strides)
  return [(width, 1, first), (width, 3, middle), (4 * width, 1, 1)]


class ResidualBlock(nn.Module):
  """One residual unit, y = act(F(x) + shortcut(x)) (He et al. 2015, Fig. 2 and Fig. 5).

  `residual=False` drops the shortcut and gives the plain twin from the same code.
  Shortcut options (paper section 3.3) where the shape changes: A zero-pads a strided identity,
  B projects with a strided 1x1 conv + norm; C projects on every block.
  `zero_init_last_norm` starts each branch's last norm scale at zero, so every block begins as the
  identity (Goyal et al. 2017; not in the ResNet paper).
  `preactivation` gives He et al. 2016's unit, y = x + F(x) with F = (norm -> act -> conv) per layer and
  nothing after the addition: the shortcut path through the whole network is then a pure identity.
  """

  width: int
  conv: ModuleDef
  norm: ModuleDef | None
  act: Callable
  strides: int = 1
  bottleneck: bool = False
  residual: bool = True
  shortcut: str = "B"
  stride_in: str = "v1"
  zero_init_last_norm: bool = False
  preactivation: bool = False

  @nn.compact
  def __call__(self, x):
    layers = branch_layers(self.bottleneck, self.width, self.strides, self.stride_in)
    if self.preactivation:
      return self._preactivated(x, layers)
    y = x
    for i, (features, kernel, strides) in enumerate(layers):
      last = i == len(layers) - 1
      norm = self.norm
      if last and self.zero_init_last_norm and norm is not None:
        norm = functools.partial(norm, scale_init=nn.initializers.zeros)
      y = ConvUnit(features, kernel, self.conv, norm, None if last else self.act, strides, name=f"conv{i + 1}")(y)
    if not self.residual:
      return self.act(y)
    return self.act(y + self._shortcut(x, x, layers[-1][0]))

  def _preactivated(self, x, layers):
    if self.zero_init_last_norm:
      raise ValueError(
        "zero-initialised last norms belong to post-activation blocks; a pre-activation branch ends in a conv"
      )
    y = x
    for i, (features, kernel, strides) in enumerate(layers):
      y = self.norm(name=f"preact{i + 1}")(y) if self.norm is not None else y
      y = self.act(y)
      if i == 0:
        activated = y  # a projection shortcut starts from the activated input too
      y = ConvUnit(features, kernel, self.conv, None, None, strides, name=f"conv{i + 1}")(y)
    return y + self._shortcut(x, activated, layers[-1][0]) if self.residual else y

  def _shortcut(self, x, projection_input, features):
    if self.shortcut not in ("A", "B", "C"):
      raise ValueError(f"unknown shortcut option {self.shortcut!r}; valid: A, B, C")
    changes_shape = self.strides != 1 or x.shape[-1] != features
    if self.shortcut == "C" or (self.shortcut == "B" and changes_shape):
      norm = None if self.preactivation else self.norm
      return ConvUnit(features, 1, self.conv, norm, None, self.strides, padding=0, name="projection")(projection_input)
    return zero_pad_shortcut(x, features, self.strides) if changes_shape else x
