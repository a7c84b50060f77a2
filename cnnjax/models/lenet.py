"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition").

32x32x1 input -> C1 conv 5x5, 6 maps -> S2 subsampling -> C3 conv 5x5, 16 maps on the partial connection
table (Table I) -> S4 subsampling -> C5 conv 5x5, 120 maps (1x1) -> F6 84 units -> 10 Euclidean RBF
units with fixed codes. Every layer up to F6 is followed by the squashing function 1.7159 tanh(2a/3).
Subsampling is not pooling: each map sums its 2x2 cells, times one trainable coefficient, plus one
trainable bias. 60,000 trainable parameters, 340,908 connections (section II-B).

The RBF output y_i = sum_j (x_j - w_ij)^2 is a distance; the logits are -y, so softmax cross-entropy on
them is the paper's discriminative criterion (eq. 9) without its constant rubbish-class term. The codes
are 7x12 bitmaps of the digits, +1 ink / -1 background, drawn here after the paper's description (the
paper's own bitmaps are not published in machine-readable form).

Options give the common re-implementations: `c3='full'` (every C3 map sees all six S2 maps),
`subsampling='average'|'max'` (parameter-free pools), `head='dense'` (a linear 84 -> classes output).
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.models.layers import activation

# Table I: the S2 maps each C3 map is connected to.
C3_CONNECTIONS = (
  (0, 1, 2),
  (1, 2, 3),
  (2, 3, 4),
  (3, 4, 5),
  (4, 5, 0),
  (5, 0, 1),
  (0, 1, 2, 3),
  (1, 2, 3, 4),
  (2, 3, 4, 5),
  (3, 4, 5, 0),
  (4, 5, 0, 1),
  (5, 0, 1, 2),
  (0, 1, 3, 4),
  (1, 2, 4, 5),
  (0, 2, 3, 5),
  (0, 1, 2, 3, 4, 5),
)

_GLYPHS = """
..###.. ...#... .####.. .####.. ....#.. #######  ..###.. ####### .#####. .#####.
.#...#. ..##... #....#. #....#. ...##.. #...... .#..... #.....# #.....# #.....#
#.....# .#.#... .....#. .....#. ..#.#.. #...... #...... .....#. #.....# #.....#
#.....# ...#... .....#. .....#. .#..#.. #...... #...... .....#. #.....# #.....#
#.....# ...#... ....#.. ..###.. #...#.. ######. #.###.. ....#.. .#####. #.....#
#.....# ...#... ...#... .....#. #...#.. ......# ##...#. ....#.. #.....# .######
#.....# ...#... ..#.... ......# ####### ......# #.....# ...#... #.....# ......#
#.....# ...#... .#..... ......# ....#.. ......# #.....# ...#... #.....# ......#
#.....# ...#... #...... #.....# ....#.. #.....# #.....# ..#.... #.....# .....#.
.#...#. ...#... #...... #....#. ....#.. .#...#. .#...#. ..#.... #.....# ....#..
..###.. .#####. ####### .####.. ...###. ..###.. ..###.. ..#.... .#####. .###...
....... ....... ....... ....... ....... ....... ....... ....... ....... .......
"""


def rbf_codes() -> np.ndarray:
  """The 84 x 10 matrix of output codes: column d is digit d's 7x12 bitmap, +1 ink and -1 background."""
  rows = [line.split() for line in _GLYPHS.strip().splitlines()]
  bitmaps = np.array([[[c == "#" for c in row[d]] for row in rows] for d in range(10)])  # 10 x 12 x 7
  return np.where(bitmaps, 1.0, -1.0).reshape(10, 84).T.astype(np.float32)


def lecun98_uniform(key, shape, dtype=jnp.float32, fan_in=None):
  """Appendix A: weights uniform in (-2.4/F, 2.4/F), F the fan-in of the unit (by default the kernel's)."""
  fan_in = fan_in or math.prod(shape[:-1])
  return jax.random.uniform(key, shape, dtype, -2.4 / fan_in, 2.4 / fan_in)


class Subsampling(nn.Module):
  """S2/S4: the sum of each 2x2 cell times a trainable per-map coefficient, plus a per-map bias."""

  @nn.compact
  def __call__(self, x):
    maps = x.shape[-1]
    # float32 stated: flax's initialisers default to JAX's default float, float64 in x64 mode
    coefficient = self.param("coefficient", functools.partial(lecun98_uniform, fan_in=4), (maps,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (maps,), jnp.float32)
    sums = lax.reduce_window(x, np.array(0, x.dtype), lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return sums * coefficient + bias


class SparseConv(nn.Module):
  """A VALID convolution in which output map i sees only the input maps connections[i].

  Maps with the same fan-in share one kernel tensor; each map is its own small convolution over just
  its inputs, so parameters and multiply-adds are exactly those of the connections that exist. (One
  grouped convolution would say the same, but XLA:CPU runs it 14 times slower here: 305 vs 22 ms per step.)
  """

  connections: tuple[tuple[int, ...], ...]
  kernel_size: int

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    maps = [None] * len(self.connections)
    for fan_in in sorted({len(c) for c in self.connections}):
      members = [i for i, c in enumerate(self.connections) if len(c) == fan_in]
      kernel = self.param(f"kernel_fan_in_{fan_in}", lecun98_uniform, (k, k, fan_in, len(members)), jnp.float32)
      bias = self.param(f"bias_fan_in_{fan_in}", nn.initializers.zeros, (len(members),), jnp.float32)
      for g, i in enumerate(members):
        inputs = x[..., np.array(self.connections[i])]
        out = lax.conv_general_dilated(
          inputs, kernel[..., g : g + 1], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        maps[i] = out + bias[g]
    return jnp.concatenate(maps, axis=-1)


class LeNet5(nn.Module):
  CLASSIFIER = "output"  # the layer that gives the logits (what trainable='head' trains)

  num_classes: int = 10
  c3: str = "paper"
  subsampling: str = "trainable"
  head: str = "rbf"
  activation: str = "scaled_tanh"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no dropout or norm: LeNet-5 behaves the same in training and evaluation
    if x.shape[1:3] != (32, 32):
      raise ValueError(f"LeNet-5 takes 32x32 inputs (pad 28x28 digits by 2), got {x.shape[1]}x{x.shape[2]}")
    for option, value, valid in (
      ("c3", self.c3, ("paper", "full")),
      ("subsampling", self.subsampling, ("trainable", "average", "max")),
      ("head", self.head, ("rbf", "dense")),
    ):
      if value not in valid:
        raise ValueError(f"unknown LeNet-5 {option} {value!r}; valid: {', '.join(valid)}")
    if self.head == "rbf" and self.num_classes != 10:
      raise ValueError(
        f"the RBF output has codes for the 10 digits only; use head='dense' for {self.num_classes} classes"
      )
    act = activation(self.activation)
    conv = functools.partial(nn.Conv, kernel_size=(5, 5), padding="VALID", kernel_init=lecun98_uniform)
    out = {}

    def subsample(x, name):
      if self.subsampling == "trainable":
        return act(Subsampling(name=name)(x))
      pool = nn.avg_pool if self.subsampling == "average" else nn.max_pool
      return pool(x, (2, 2), (2, 2))

    x = out["C1"] = act(conv(6, name="C1")(x))
    x = out["S2"] = subsample(x, "S2")
    c3 = SparseConv(C3_CONNECTIONS, 5, name="C3") if self.c3 == "paper" else conv(16, name="C3")
    x = out["C3"] = act(c3(x))
    x = out["S4"] = subsample(x, "S4")
    x = out["C5"] = act(conv(120, name="C5")(x)).reshape(x.shape[0], -1)
    x = out["F6"] = out["pre_logits"] = act(nn.Dense(84, kernel_init=lecun98_uniform, name="F6")(x))
    if self.head == "dense":
      return nn.Dense(self.num_classes, kernel_init=lecun98_uniform, name="output")(x), out
    return RBFOutput(name="output")(x), out


class RBFOutput(nn.Module):
  """Euclidean RBF units with the fixed digit codes; returns -distance as logits (no parameters)."""

  @nn.compact
  def __call__(self, x):
    codes = jnp.asarray(rbf_codes())
    # -||x - w||^2 = 2 x.w - ||x||^2 - ||w||^2: one 84 x 10 product, the paper's 840 connections
    return 2 * x @ codes - jnp.sum(x * x, axis=-1, keepdims=True) - jnp.sum(codes * codes, axis=0)
