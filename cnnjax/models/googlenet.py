"""GoogLeNet / Inception v1 (Szegedy et al. 2014, arXiv 1409.4842) as in the paper and its Caffe model.

conv1 7x7/2 64 -> max-pool 3x3/2 -> LRN -> conv2 1x1 64 (reduce) -> conv2 3x3 192 -> LRN -> max-pool ->
inception 3a, 3b -> max-pool -> 4a..4e -> max-pool -> 5a, 5b -> average pool -> dropout 0.4 -> linear.
Every stride-2 max-pool is 3x3 with ceil rounding (Caffe's), giving 112, 56, 28, 14, 7; every conv,
reductions and projections included, has a bias and a ReLU. "22 layers deep when counting only layers
with parameters".

Auxiliary classifiers (section 5) sit on 4a and 4d in training only: average pool 5x5/3 (4x4 out),
1x1 conv 128, FC 1024, dropout 0.7, linear. Their logits are returned under 'aux_4a' and 'aux_4d'
when train=True; at inference they are not built at all (the paper discards them).

Options: `inception='naive'` builds every module as Fig. 2(a); `norm='batchnorm'` replaces LRN and the
conv biases by BatchNorm; `c5_kernel=3` and `dropout=0.2` with batchnorm give torchvision's layer shapes,
and `layout='torchvision'` its arithmetic that the shapes do not show: a 2x2/2 max-pool before 5a, auxiliary
heads that pool adaptively onto 4x4, BatchNorm epsilon 1e-3 (together: the registry's googlenet_torchvision).
`aux_dropout` is the auxiliary heads' dropout (the paper's 0.7; torchvision's dropout_aux).
`transform_input=True` is what torchvision switches on with its published weights: the input, normalised by
the ImageNet mean and std, is renormalised to (x - 0.5) / 0.5, the range the ported weights were trained on.
Inputs other than 224x224 use global average pooling for the main head and adaptive pooling onto 4x4 for the
auxiliary heads.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.models.blocks import ConvUnit, Inception
from cnnjax.models.layers import (
  Dropout,
  activation,
  adaptive_avg_pool,
  conv_norm,
  global_avg_pool,
  local_response_norm,
  max_pool,
)
from cnnjax.models.outputs import auxiliary_name

# Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); None marks a 3x3/2 max-pool.
INCEPTION_SPECS = {
  "3a": (64, 96, 128, 16, 32, 32),
  "3b": (128, 128, 192, 32, 96, 64),
  "4a": (192, 96, 208, 16, 48, 64),
  "4b": (160, 112, 224, 24, 64, 64),
  "4c": (128, 128, 256, 24, 64, 64),
  "4d": (112, 144, 288, 32, 64, 64),
  "4e": (256, 160, 320, 32, 128, 128),
  "5a": (256, 160, 320, 32, 128, 128),
  "5b": (384, 192, 384, 48, 128, 128),
}
POOL_BEFORE = ("4a", "5a")
AUX_HEADS = ("4a", "4d")

# Caffe's bvlc_googlenet: "xavier" weights (variance 1/fan_in), biases 0.2; classifiers' biases 0.
XAVIER = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

# torchvision's input transform: from (x - mean) / std with ImageNet's statistics to (x - 0.5) / 0.5
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # float64
LAYOUTS = ("paper", "torchvision")


def caffe_lrn(x):
  """The Caffe model's LRN: local_size 5, alpha 1e-4 (divided by the size, Caffe's convention), beta 0.75, k 1."""
  return local_response_norm(x, size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


class AuxiliaryClassifier(nn.Module):
  num_classes: int
  unit: functools.partial
  act: object
  dropout: float = 0.7
  axis_name: str | None = None
  adaptive: bool = False  # torchvision's adaptive 4x4 pool (windows 4 wide at 14x14), not the paper's 5x5/3

  @nn.compact
  def __call__(self, x, train: bool):
    # the paper's 5x5/3 average pool turns 14x14 into 4x4; other input sizes pool onto the same grid
    paper_pool = x.shape[1:3] == (14, 14) and not self.adaptive
    x = nn.avg_pool(x, (5, 5), (3, 3)) if paper_pool else adaptive_avg_pool(x, 4)
    x = self.unit(128, 1, name="conv")(x).reshape(x.shape[0], -1)
    x = self.act(nn.Dense(1024, kernel_init=XAVIER, bias_init=nn.initializers.constant(0.2), name="fc")(x))
    x = Dropout(self.dropout, self.axis_name)(x, deterministic=not train)
    return nn.Dense(self.num_classes, kernel_init=XAVIER, name="classifier")(x)


class GoogLeNet(nn.Module):
  CLASSIFIER = "fc"  # the layer that gives the logits (what trainable='head' trains)
  FC_GRID = 0  # a global average pool feeds the classifier: fully convolutional as it is (models/dense.py)

  num_classes: int = 1000
  inception: str = "reduced"
  aux_heads: bool = True
  norm: str = "lrn"
  activation: str = "relu"
  c5_kernel: int = 5
  dropout: float = 0.4
  aux_dropout: float = 0.7  # in each auxiliary head, before its classifier (torchvision's dropout_aux)
  layout: str = "paper"  # or 'torchvision' (module docstring)
  transform_input: bool = False
  axis_name: str | None = None  # BatchNorm statistics (and dropout masks) over this pmap axis in training

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.layout not in LAYOUTS:
      raise ValueError(f"unknown GoogLeNet layout {self.layout!r}; valid: {', '.join(LAYOUTS)}")
    torchvision = self.layout == "torchvision"
    if self.transform_input:
      x = x * jnp.asarray(IMAGENET_STD / 0.5, x.dtype) + jnp.asarray((IMAGENET_MEAN - 0.5) / 0.5, x.dtype)
    act = activation(self.activation)
    norm = conv_norm(
      self.norm,
      train,
      choices=("lrn", "batchnorm", "none"),
      axis_name=self.axis_name,
      epsilon=1e-3 if torchvision else 1e-5,
    )
    lrn = caffe_lrn if self.norm == "lrn" else (lambda x: x)
    conv = functools.partial(
      nn.Conv, use_bias=norm is None, kernel_init=XAVIER, bias_init=nn.initializers.constant(0.2)
    )
    unit = functools.partial(ConvUnit, conv=conv, norm=norm, act=act)
    out = {}
    x = unit(64, 7, strides=2, name="conv1")(x)
    x = out["conv1"] = lrn(max_pool(x, 3, 2, ceil_mode=True))
    x = unit(64, 1, name="conv2_reduce")(x)
    x = unit(192, 3, name="conv2")(x)
    x = out["conv2"] = max_pool(lrn(x), 3, 2, ceil_mode=True)
    for stage, spec in INCEPTION_SPECS.items():
      if stage in POOL_BEFORE:
        x = max_pool(x, 2 if torchvision and stage == "5a" else 3, 2, ceil_mode=True)
      name = f"inception_{stage}"
      x = out[name] = Inception(*spec, conv, norm, act, self.inception, self.c5_kernel, name=name)(x)
      if train and self.aux_heads and stage in AUX_HEADS:
        head = auxiliary_name(stage)
        classifier = AuxiliaryClassifier(
          self.num_classes, unit, act, self.aux_dropout, axis_name=self.axis_name, adaptive=torchvision, name=head
        )
        out[head] = classifier(x, train)
    x = global_avg_pool(x)  # the paper's 7x7/1 average pool at 224x224
    x = out["pre_logits"] = Dropout(self.dropout, self.axis_name)(x, deterministic=not train)
    return nn.Dense(self.num_classes, kernel_init=XAVIER, name="fc")(x), out
