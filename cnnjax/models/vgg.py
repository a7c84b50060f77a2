"""VGG (Simonyan & Zisserman 2014, arXiv 1409.1556), configurations A, B, D, E, with or without BatchNorm.

Five blocks of 3x3 convs (stride 1, pad 1, ReLU) on 64, 128, 256, 512, 512 channels, each followed by a
2x2/2 max-pool; then FC-4096, FC-4096 (dropout 0.5 on both outputs) and the classifier. Layers are named
as in the Caffe release: conv{block}_{layer}, fc6, fc7, fc8.

On inputs other than 224x224 the last maps are average-pooled onto the paper's 7x7 grid (as torchvision
does) so the classifier keeps its size; `global_pool=True` instead feeds the classifier a global average
pool: 512 inputs to fc6, the cheap head for small local runs.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn

from cnnjax.models.blocks import ConvUnit
from cnnjax.models.layers import (
  Dropout,
  activation,
  adaptive_avg_pool,
  check_sizes,
  conv_norm,
  global_avg_pool,
  max_pool,
)

# The paper initialised deeper nets from net A, and notes Glorot & Bengio's initialisation makes that
# unnecessary (section 3.1); biases start at zero.
GLOROT = nn.initializers.glorot_uniform()


class VGG(nn.Module):
  CLASSIFIER = "fc8"  # the layer that gives the logits (what trainable='head' trains)
  FC_GRID = 7  # fc6 reads a 7x7 map: dense evaluation applies it as a 7x7 convolution (models/dense.py)

  block_sizes: Sequence[int]
  num_classes: int = 1000
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  norm: str = "none"  # 'batchnorm': conv -> BN -> ReLU, the torchvision vgg*_bn models
  activation: str = "relu"
  dropout: float = 0.5
  global_pool: bool = False
  fc_width: int = 4096  # fc6 and fc7
  axis_name: str | None = None  # BatchNorm statistics (and dropout masks) over this pmap axis in training

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_sizes(widths=self.widths, block_sizes=self.block_sizes, fc_width=self.fc_width)
    if len(self.widths) != len(self.block_sizes):
      raise ValueError(f"widths {tuple(self.widths)} must give one width per block of {tuple(self.block_sizes)}")
    act = activation(self.activation)
    norm = conv_norm(self.norm, train, axis_name=self.axis_name)
    conv = functools.partial(nn.Conv, kernel_init=GLOROT)
    out = {}
    for block, (size, width) in enumerate(zip(self.block_sizes, self.widths), start=1):
      for layer in range(1, size + 1):
        x = ConvUnit(width, 3, conv, norm, act, name=f"conv{block}_{layer}")(x)
      x = out[f"block{block}"] = max_pool(x, 2, 2)
    x = global_avg_pool(x) if self.global_pool else adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = act(nn.Dense(self.fc_width, kernel_init=GLOROT, name=name)(x))
      x = out[name] = Dropout(self.dropout, self.axis_name)(x, deterministic=not train)
    out["pre_logits"] = x
    return nn.Dense(self.num_classes, kernel_init=GLOROT, name="fc8")(x), out


VGG11 = functools.partial(VGG, block_sizes=(1, 1, 2, 2, 2))  # configuration A
VGG13 = functools.partial(VGG, block_sizes=(2, 2, 2, 2, 2))  # B
VGG16 = functools.partial(VGG, block_sizes=(2, 2, 3, 3, 3))  # D
VGG19 = functools.partial(VGG, block_sizes=(2, 2, 4, 4, 4))  # E
