"""The PyTorch twins of the zoo's networks, with random weights: torchvision's models and the PyTorch peer of
`cnnjax.bench` (cnnjax/bench_torch.py). Imported by the tests that need torch, after their skip."""

import torch
import torchvision.models as tv_models

TORCHVISION_NAME = {"alexnet_torchvision": "alexnet", "googlenet_torchvision": "googlenet"}


def randomize(model, seed: int = 0):
  """`model` with every parameter and buffer random (BatchNorm variances positive), so a tensor that lands in the
  wrong place, or in the wrong layout, shows in the outputs."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
      if key.endswith("running_var"):
        tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
      elif key.endswith(("running_mean", "bias")):
        tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.2)
      elif tensor.ndim == 1 and tensor.is_floating_point():  # BatchNorm's scale
        tensor.copy_(1 + torch.randn(tensor.shape, generator=g) * 0.2)
  return model


def torchvision_model(name: str, seed: int = 0, **kwargs):
  """torchvision's `name` in eval mode, random (`randomize`); conv and linear weights keep torchvision's init."""
  tv_name = TORCHVISION_NAME.get(name, name)
  if tv_name == "googlenet":  # as torchvision builds it for its weights: auxiliary heads in the file, input transform
    kwargs = dict(aux_logits=True, transform_input=True, init_weights=False, **kwargs)
  return randomize(tv_models.get_model(tv_name, weights=None, **kwargs).eval(), seed)
