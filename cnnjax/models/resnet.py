"""ResNet (He, Zhang, Ren, Sun 2015, arXiv 1512.03385) and its plain twins, for ImageNet and CIFAR.

ImageNet (Table 1): 7x7/2 conv + 3x3/2 max-pool, stages conv2_x..conv5_x of basic or bottleneck blocks
on 64..512 widths, global average pool, FC. CIFAR (section 4.2): 3x3 conv 16, three stages of n basic
blocks on 16/32/64 widths, global average pool, FC; depth 6n+2, option-A shortcuts ("so our residual
models have exactly the same depth, width, and number of parameters as the plain counterparts").

Stages are named as the paper's Table 1 (conv2_x ...): block j of stage i is the module `conv{i}_{j}`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from cnnjax.models.blocks import ConvUnit, ResidualBlock
from cnnjax.models.layers import activation, check_sizes, conv_norm, global_avg_pool, max_pool

# He et al. 2015 initialise "as in [13]" (the PReLU paper): a normal with variance 2/fan; torchvision
# uses fan-out, as here.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Rematerialisation of each residual block in the backward pass (same gradients, less memory):
# 'none' keeps every intermediate; 'norms' keeps the convolutions' outputs and recomputes BatchNorm and the
# activations (the cheap, memory-bound part); 'blocks' keeps only each block's input and recomputes the block.
REMAT = {
  "none": None,
  "norms": jax.checkpoint_policies.dots_saveable,  # convolutions count as dots here
  "blocks": jax.checkpoint_policies.nothing_saveable,
}


class ResNet(nn.Module):
  """A residual (or, with residual=False, plain) network of `stage_sizes` blocks per stage."""

  CLASSIFIER = "fc"  # the layer that gives the logits (what trainable='head' trains)
  FC_GRID = 0  # a global average pool feeds the classifier: fully convolutional as it is (models/dense.py)

  stage_sizes: Sequence[int]
  num_classes: int = 1000
  bottleneck: bool = False
  stem: str = "imagenet"  # 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3 conv)
  widths: Sequence[int] = (64, 128, 256, 512)
  residual: bool = True
  shortcut: str = "B"
  stride_in: str = "v1"
  zero_init_residual: bool = False
  preactivation: bool = False  # He et al. 2016: norm -> act -> conv units, identity shortcut path
  activation: str = "relu"
  norm: str = "batchnorm"
  axis_name: str | None = None  # BatchNorm statistics averaged over this pmap axis in training
  remat: str = "none"  # what the backward pass recomputes instead of keeping (REMAT): memory for compute

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.stem not in ("imagenet", "cifar"):
      raise ValueError(f"unknown stem {self.stem!r}; valid: imagenet, cifar")
    if self.remat not in REMAT:
      raise ValueError(f"unknown remat {self.remat!r}; valid: {', '.join(REMAT)}")
    check_sizes(widths=self.widths, stage_sizes=self.stage_sizes)
    if len(self.widths) != len(self.stage_sizes):
      raise ValueError(f"widths {tuple(self.widths)} must give one width per stage of {tuple(self.stage_sizes)}")
    act = activation(self.activation)
    norm = conv_norm(self.norm, train, axis_name=self.axis_name)
    # BatchNorm's shift makes a conv bias redundant; without a norm the convs need their own.
    conv = functools.partial(nn.Conv, use_bias=norm is None, kernel_init=HE_NORMAL)
    out = {}
    if self.stem == "imagenet":
      x = ConvUnit(self.widths[0], 7, conv, norm, act, strides=2, name="conv1")(x)
      x = max_pool(x, 3, 2, padding=1)
    else:  # a pre-activation network leaves the stem's norm and activation to the first unit
      x = ConvUnit(self.widths[0], 3, conv, *((None, None) if self.preactivation else (norm, act)), name="conv1")(x)
    out["conv1"] = x
    block = functools.partial(
      nn.remat(ResidualBlock, policy=REMAT[self.remat]) if REMAT[self.remat] else ResidualBlock,
      conv=conv,
      norm=norm,
      act=act,
      bottleneck=self.bottleneck,
      residual=self.residual,
      shortcut=self.shortcut,
      stride_in=self.stride_in,
      zero_init_last_norm=self.zero_init_residual,
      preactivation=self.preactivation,
    )
    for i, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(size):
        name = f"conv{i + 2}_{j + 1}"
        x = block(width, strides=2 if i > 0 and j == 0 else 1, name=name)(x)
        out[name] = x
    if self.preactivation:  # the last units' sum has not been normalised or activated yet
      x = act(norm(name="final_norm")(x) if norm is not None else x)
    x = out["pre_logits"] = global_avg_pool(x)
    return nn.Dense(self.num_classes, name="fc")(x), out


# ImageNet networks, paper Table 1; option B as the paper's 50/101/152 (and torchvision's 18/34).
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), bottleneck=True)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), bottleneck=True)

IMAGENET_RESNETS = {18: ResNet18, 34: ResNet34, 50: ResNet50, 101: ResNet101, 152: ResNet152}


def cifar_resnet(depth: int, residual: bool = True):
  """The CIFAR-10 ResNet (or plain net) of depth 6n+2 (paper section 4.2): option-A shortcuts, 10 classes."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...), not {depth}")
  n = (depth - 2) // 6
  return functools.partial(
    ResNet, stage_sizes=(n, n, n), stem="cifar", widths=(16, 32, 64), shortcut="A", num_classes=10, residual=residual
  )
