"""Dense evaluation (VGG section 3.2; ResNet section 3.4): a network applied to a whole image larger than its
training crops, its class scores averaged over the positions of the image.

A network whose classifier reads a global average pool (ResNet, GoogLeNet; VGG and AlexNet with `global_pool`) is
fully convolutional as it is: at any input, its logits are the mean over the last map's positions of the scores
its linear classifier would give each. VGG and AlexNet flatten a 7x7 (6x6) map into fc6: here fc6 becomes a 7x7
(6x6) convolution with the same weights and fc7, fc8 1x1 convolutions, which turns the whole image into a map of
class scores, one per 7x7 window of the last conv map (a 224 crop's worth of input, 32 pixels apart). Models
declare which they are by `FC_GRID` (0: global pooling); a model without it has no dense form.
"""

import jax.numpy as jnp
from jax import lax

from cnnjax.models.layers import activation

NHWC = ("NHWC", "HWIO", "NHWC")  # fc6's kernel as a convolution's: (rows, columns, in, out)


def has_dense_form(model) -> bool:
  return getattr(model, "FC_GRID", None) is not None


def score_map(model, variables, images):
  """Class scores (logits) of every position, [B, h, w, classes]: for a globally pooled network one position (its
  logits, the mean of the map it pools)."""
  if not has_dense_form(model):
    raise ValueError(f"{type(model).__name__} has no fully-convolutional form for eval_protocol 'dense'")
  logits, out = model.apply(variables, images, train=False)
  if not model.FC_GRID or getattr(model, "global_pool", False):
    return logits[:, None, None]
  names = list(out)  # intermediates in forward order: fc6 reads the one before it
  features = out[names[names.index("fc6") - 1]]
  params, act, grid = variables["params"], activation(model.activation), model.FC_GRID
  kernel = params["fc6"]["kernel"].reshape(grid, grid, features.shape[-1], -1)  # the flatten's (row, col, channel)
  x = lax.conv_general_dilated(features, kernel.astype(features.dtype), (1, 1), "VALID", dimension_numbers=NHWC)
  x = act(x + params["fc6"]["bias"])
  x = act(x @ params["fc7"]["kernel"] + params["fc7"]["bias"])
  return x @ params["fc8"]["kernel"] + params["fc8"]["bias"]


def dense_logits(model, variables, images):
  """The score map averaged over its positions (VGG's sum-pooling, as a mean), [B, classes]."""
  return jnp.mean(score_map(model, variables, images), axis=(1, 2))
