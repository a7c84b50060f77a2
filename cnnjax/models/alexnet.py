"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as in the paper, and the single-tower torchvision layout.

Paper (227x227 input, the size its 55x55 conv1 maps need): conv1 96 11x11/4 -> ReLU -> LRN -> max-pool
3x3/2; conv2 256 5x5 in two groups (the two GPUs) -> ReLU -> LRN -> max-pool; conv3 384 3x3 (sees both
towers); conv4 384 and conv5 256 3x3 in two groups; max-pool; fc6, fc7 4096 with dropout 0.5 on their
outputs; fc8. Weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere (section 5).

torchvision (224 input): 64-192-384-256-256 channels, conv1 padded by 2, no groups, no LRN, dropout
before fc6 and fc7, PyTorch's default initialisation.

`norm='batchnorm'` puts BatchNorm after every conv in place of LRN; `norm='none'` drops both. Inputs
other than the paper's are average-pooled onto the 6x6 grid fc6 expects.
"""

import functools
from typing import NamedTuple

import flax.linen as nn

from cnnjax.models.blocks import ConvUnit
from cnnjax.models.layers import (
  Dropout,
  activation,
  adaptive_avg_pool,
  check_sizes,
  conv_norm,
  global_avg_pool,
  local_response_norm,
  max_pool,
)


class ConvLayer(NamedTuple):
  features: int
  kernel: int
  stride: int
  padding: int
  groups: int
  bias: float  # initial bias


class Layout(NamedTuple):
  convs: tuple[ConvLayer, ...]
  fc_bias: float
  dropout_before_fc: bool
  kernel_init: nn.initializers.Initializer


LAYOUTS = {
  "paper": Layout(
    convs=(
      ConvLayer(96, 11, 4, 0, 1, 0.0),
      ConvLayer(256, 5, 1, 2, 2, 1.0),
      ConvLayer(384, 3, 1, 1, 1, 0.0),
      ConvLayer(384, 3, 1, 1, 2, 1.0),
      ConvLayer(256, 3, 1, 1, 2, 1.0),
    ),
    fc_bias=1.0,
    dropout_before_fc=False,
    kernel_init=nn.initializers.normal(0.01),
  ),
  "torchvision": Layout(
    convs=(
      ConvLayer(64, 11, 4, 2, 1, 0.0),
      ConvLayer(192, 5, 1, 2, 1, 0.0),
      ConvLayer(384, 3, 1, 1, 1, 0.0),
      ConvLayer(256, 3, 1, 1, 1, 0.0),
      ConvLayer(256, 3, 1, 1, 1, 0.0),
    ),
    fc_bias=0.0,
    dropout_before_fc=True,
    # PyTorch's default kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
  ),
}


class AlexNet(nn.Module):
  CLASSIFIER = "fc8"  # the layer that gives the logits (what trainable='head' trains)
  FC_GRID = 6  # fc6 reads a 6x6 map: dense evaluation applies it as a 6x6 convolution (models/dense.py)

  num_classes: int = 1000
  layout: str = "paper"
  norm: str = "lrn"
  activation: str = "relu"
  dropout: float = 0.5
  global_pool: bool = False
  fc_width: int = 4096  # fc6 and fc7
  axis_name: str | None = None  # BatchNorm statistics (and dropout masks) over this pmap axis in training

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.layout not in LAYOUTS:
      raise ValueError(f"unknown AlexNet layout {self.layout!r}; valid: {', '.join(LAYOUTS)}")
    layout = LAYOUTS[self.layout]
    check_sizes(fc_width=self.fc_width)
    act = activation(self.activation)
    norm = conv_norm(self.norm, train, choices=("lrn", "batchnorm", "none"), axis_name=self.axis_name)
    out = {}
    for i, layer in enumerate(layout.convs, start=1):
      conv = functools.partial(nn.Conv, kernel_init=layout.kernel_init, bias_init=nn.initializers.constant(layer.bias))
      x = ConvUnit(
        layer.features, layer.kernel, conv, norm, act, layer.stride, layer.padding, layer.groups, name=f"conv{i}"
      )(x)
      if self.norm == "lrn" and i in (1, 2):
        x = local_response_norm(x)  # after ReLU, before pooling (section 3.5)
      if i in (1, 2, 5):
        x = max_pool(x, 3, 2)  # overlapping pooling, z=3, s=2 (section 3.4)
      out[f"conv{i}"] = x
    x = global_avg_pool(x) if self.global_pool else adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
    dense = functools.partial(nn.Dense, kernel_init=layout.kernel_init)
    for name in ("fc6", "fc7"):
      if layout.dropout_before_fc:
        x = Dropout(self.dropout, self.axis_name)(x, deterministic=not train)
      x = act(dense(self.fc_width, bias_init=nn.initializers.constant(layout.fc_bias), name=name)(x))
      if not layout.dropout_before_fc:
        x = Dropout(self.dropout, self.axis_name)(x, deterministic=not train)
      out[name] = x
    out["pre_logits"] = x
    return dense(self.num_classes, name="fc8")(x), out
