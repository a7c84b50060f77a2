"""torchvision's ImageNet weights in the zoo's models, with torchvision's logits.

    model, variables = from_torchvision("resnet50", "resnet50-0676ba61.pth")
    logits, _ = model.apply(variables, images_nhwc, train=False)

torchvision publishes ImageNet weights for layouts the zoo builds: alexnet_torchvision, vgg11..vgg19 and their
_bn twins, googlenet_torchvision and resnet18..resnet152. Each torchvision tensor has one place in the zoo's
model, found from the flax parameter's path by the family's naming rule below (no architecture is written twice);
its layout changes on the way: convolutions OIHW -> HWIO, linear layers (out, in) -> (in, out), and where a linear
layer reads a flattened map (AlexNet's and VGG's fc6, GoogLeNet's auxiliary fc) its inputs are reordered from
PyTorch's channel-major C, H, W to the H, W, C of an NHWC map. BatchNorm's running statistics become the
'batch_stats' collection. Every tensor is accounted for: a missing, unexpected or misshaped one is an error that
names it.
"""

import functools
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.models import registry

# How torchvision builds each network for its published weights, as options of the zoo's model.
BOTTLENECK_STRIDE = {"stride_in": "v1.5"}  # torchvision strides the bottleneck's 3x3 (ResNet v1.5)
TORCHVISION = {
  "alexnet_torchvision": {},
  **{f"vgg{d}{bn}": {} for bn in ("", "_bn") for d in (11, 13, 16, 19)},
  "googlenet_torchvision": {"transform_input": True},  # torchvision turns it on when it loads weights
  **{f"resnet{d}": BOTTLENECK_STRIDE for d in (18, 34, 50, 101, 152)},
}
# The linear layers that read a flattened (channels, grid, grid) map in PyTorch: their grid.
FLATTENED_GRID = {"alexnet": {"fc6": 6}, "vgg": {"fc6": 7}, "googlenet": {"aux_4a/fc": 4, "aux_4d/fc": 4}}
# PyTorch's name of each leaf: conv and linear weights, BatchNorm's affine parameters and statistics.
LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
IGNORED = ("num_batches_tracked",)  # BatchNorm's step counter: no part of the computation


class WeightsError(ValueError):
  """Weights that do not fit the model, or cannot be read: the message names the tensors or the file."""


def family(name: str) -> str:
  """'resnet50' -> 'resnet', 'vgg16_bn' -> 'vgg': whose naming rule maps its tensors."""
  return re.match(r"[a-z]+", name).group()


def _alexnet_module(path: tuple[str, ...], model) -> str:
  layer = path[0]
  if layer.startswith("conv"):
    return f"features.{(0, 3, 6, 8, 10)[int(layer[4:]) - 1]}"
  return {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}[layer]


def _vgg_module(path: tuple[str, ...], model) -> str:
  layer = path[0]
  if layer.startswith("fc"):
    return {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}[layer]
  # torchvision's `features` counts every module: conv, (BatchNorm,) ReLU per layer and a max-pool per block
  per_layer = 3 if model.norm == "batchnorm" else 2
  block, index = (int(n) for n in re.fullmatch(r"conv(\d)_(\d+)", layer).groups())
  first = sum(size * per_layer + 1 for size in model.block_sizes[: block - 1]) + (index - 1) * per_layer
  return f"features.{first + (path[1] == 'norm')}"


def _googlenet_module(path: tuple[str, ...], model) -> str:
  layer, *rest = path
  unit = {"conv": "conv", "norm": "bn"}
  if layer in ("conv1", "conv2_reduce", "conv2"):
    return f"{ {'conv1': 'conv1', 'conv2_reduce': 'conv2', 'conv2': 'conv3'}[layer] }.{unit[rest[0]]}"
  if layer == "fc":
    return "fc"
  if layer.startswith("aux_"):
    head = {"aux_4a": "aux1", "aux_4d": "aux2"}[layer]
    return (
      f"{head}.conv.{unit[rest[1]]}" if rest[0] == "conv" else f"{head}.{ {'fc': 'fc1', 'classifier': 'fc2'}[rest[0]] }"
    )
  branch = {
    "1x1": "branch1",
    "3x3_reduce": "branch2.0",
    "3x3": "branch2.1",
    "5x5_reduce": "branch3.0",
    "5x5": "branch3.1",
    "pool_proj": "branch4.1",
  }[rest[0]]
  return f"{layer.replace('_', '')}.{branch}.{unit[rest[1]]}"


def _resnet_module(path: tuple[str, ...], model) -> str:
  layer, *rest = path
  if layer == "fc":
    return "fc"
  if layer == "conv1":
    return {"conv": "conv1", "norm": "bn1"}[rest[0]]
  stage, block = (int(n) for n in re.fullmatch(r"conv(\d)_(\d+)", layer).groups())
  prefix = f"layer{stage - 1}.{block - 1}"
  unit, part = rest
  if unit == "projection":
    return f"{prefix}.downsample.{0 if part == 'conv' else 1}"
  return f"{prefix}.{'conv' if part == 'conv' else 'bn'}{unit[len('conv') :]}"


MODULE_NAMES = {
  "alexnet": _alexnet_module,
  "vgg": _vgg_module,
  "googlenet": _googlenet_module,
  "resnet": _resnet_module,
}


def read(weights) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays, from a .pth or .safetensors file or a mapping of names to arrays or tensors."""
  if isinstance(weights, Mapping):
    return {k: _to_numpy(v) for k, v in weights.items()}
  path = os.fspath(weights)
  if not os.path.isfile(path):
    raise WeightsError(f"no weight file {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # numpy only: no torch needed

    return load_file(path)
  if not path.endswith((".pth", ".pt")):
    raise WeightsError(f"cannot read {path}: weights are a torchvision .pth file or a .safetensors file")
  try:
    import torch
  except ImportError:
    raise WeightsError(
      f"reading {path} needs PyTorch: pip install -e '.[torch]' (or convert it to .safetensors elsewhere)"
    ) from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise WeightsError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
  if isinstance(state, Mapping) and "state_dict" in state:  # a training checkpoint rather than the bare weights
    state = state["state_dict"]
  return read(state)


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; float32 as the model computes (half-precision files included)
    value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
  return np.asarray(value)


def _convert(array: np.ndarray, leaf: str, grid: int | None) -> np.ndarray:
  """One PyTorch tensor in the layout of its flax variable (`grid`: of the map a linear layer reads flattened)."""
  if leaf == "kernel" and array.ndim == 4:  # conv: (out, in/groups, kh, kw) -> (kh, kw, in/groups, out)
    return array.transpose(2, 3, 1, 0)
  if leaf == "kernel" and array.ndim == 2:  # linear: (out, in) -> (in, out)
    if grid:  # in = C*H*W channel-major in PyTorch; an NHWC map flattens H, W, C
      out, inputs = array.shape
      array = array.reshape(out, inputs // grid**2, grid, grid).transpose(0, 2, 3, 1).reshape(out, inputs)
    return array.T
  return array


def _num_classes(state: dict, family: str) -> int:
  last = {"alexnet": "classifier.6.weight", "vgg": "classifier.6.weight"}.get(family, "fc.weight")
  if last not in state:
    raise WeightsError(f"the weights have no {last}: not a torchvision {family} state dict")
  return state[last].shape[0]


def _listed(keys) -> str:
  keys = sorted(keys)
  return f"{len(keys)}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"


def from_torchvision(name: str, weights, **options):
  """(model, variables) of the zoo's `name` holding torchvision's weights, configured as torchvision builds it.

  `weights`: a .pth file as torchvision downloads it (needs torch, the `[torch]` extra; loaded with
  weights_only=True), a .safetensors file (read with numpy, no torch), or a state dict (names to numpy arrays or
  torch tensors). `options` are the model's own, applied over torchvision's (e.g. transform_input=False). The
  number of classes is the weights' own. `variables` are {'params', 'batch_stats'} as every cnnjax model keeps
  them, and `model.apply(variables, x_nhwc, train=False)` gives torchvision's `model.eval()(x_nchw)` logits.

  GoogLeNet: torchvision's published file also carries the two auxiliary heads, which were never trained
  (torchvision warns so when they are asked for); they are loaded when present, as the start of a fine-tuning
  that trains them, and the model has no auxiliary heads when the weights have none.
  """
  if name not in TORCHVISION:
    raise ValueError(f"no torchvision weights for {name!r}; valid: {', '.join(TORCHVISION)}")
  state = {k: v for k, v in read(weights).items() if k.rsplit(".", 1)[-1] not in IGNORED}
  network_family = family(name)
  options = {**TORCHVISION[name], **options}
  if network_family == "googlenet":
    options.setdefault("aux_heads", any(k.startswith("aux1.") for k in state))
  model = registry.create(name, num_classes=_num_classes(state, network_family), **options)
  return model, load_state(model, name, state)


def load_state(model, name: str, state: dict[str, np.ndarray], dtype=np.float32) -> dict:
  """`state` (torchvision's names, numpy arrays) as the variables of the zoo's `model`, arrays of `dtype` (float64
  for a float64 model); WeightsError unless every tensor of each side has its counterpart, of the right shape."""
  network_family = family(name)
  module_name, grids = MODULE_NAMES[network_family], FLATTENED_GRID.get(network_family, {})
  shapes = _variable_shapes(model, registry.input_shape(name))
  variables, used, missing, misshaped = {"params": {}, "batch_stats": {}}, set(), [], []
  for collection, tree in shapes.items():
    for path, target in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(p.key for p in path)
      key = f"{module_name(keys[:-1], model)}.{LEAF[keys[-1]]}"
      if key not in state:
        missing.append(key)
        continue
      used.add(key)
      array = _convert(np.asarray(state[key], dtype), keys[-1], grids.get("/".join(keys[:-1])))
      if array.shape != target.shape:
        misshaped.append(f"{key} {tuple(state[key].shape)} (the model's {'/'.join(keys)} needs {target.shape})")
        continue
      node = variables[collection]
      for k in keys[:-1]:
        node = node.setdefault(k, {})
      node[keys[-1]] = jnp.asarray(array)
  unexpected = set(state) - used
  problems = [f"{what} {_listed(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
  if misshaped:
    problems.append(f"misshaped {len(misshaped)}: {'; '.join(misshaped[:3])}{' ...' if len(misshaped) > 3 else ''}")
  if problems:
    raise WeightsError(f"the weights do not fit torchvision's {name}: " + "; ".join(problems))
  return variables


@functools.lru_cache(maxsize=32)
def _variable_shapes(model, shape: tuple[int, int, int]) -> dict:
  """{'params', 'batch_stats'} shapes of `model` in training (where GoogLeNet's auxiliary heads exist)."""
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  variables = jax.eval_shape(functools.partial(model.init, train=True), rngs, x)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def merge(fresh: dict, source: dict, new_head: tuple[str, ...] = ()) -> dict:
  """`fresh` variables ({'params', 'batch_stats'} of a new model) with every tensor taken from `source` (another
  model's) but those of the layers in `new_head` (paths such as 'fc' or 'aux_4a/classifier': a new task's
  classifiers start as initialised). Any other difference (a missing layer, another width) is a WeightsError
  naming it: the source is then another architecture, and a silently random layer would be a bug."""
  flat_source = {tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
  mismatched = []

  def take(path, leaf):
    keys = tuple(p.key for p in path)
    if "/".join(keys[1:-1]) in new_head:
      return leaf
    theirs = flat_source.get(keys)
    if theirs is not None and np.shape(theirs) == leaf.shape:
      return jnp.asarray(theirs, leaf.dtype)
    mismatched.append(f"{'/'.join(keys[1:])} {'absent' if theirs is None else np.shape(theirs)} (needs {leaf.shape})")
    return leaf

  merged = jax.tree_util.tree_map_with_path(take, fresh)
  if mismatched:
    raise WeightsError(
      f"the pretrained weights do not fit this model: {len(mismatched)} tensor(s) differ: "
      f"{'; '.join(mismatched[:4])}{' ...' if len(mismatched) > 4 else ''}"
    )
  return merged


def heads(model, params: dict) -> tuple[str, ...]:
  """The paths of `model`'s classifiers: the one that gives the logits, and GoogLeNet's auxiliary ones."""
  return (model.CLASSIFIER, *(f"{k}/classifier" for k in params if k.startswith("aux_")))
