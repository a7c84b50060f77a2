"""Model names -> constructors and the input size each was designed for.

`create('resnet50', num_classes=10, stride_in='v1.5')` builds any model; option names are the model's
fields and are checked here, option values by the model when it is first traced. CIFAR ResNets and their
plain twins take any depth 6n+2: `resnet20`, `plain56`, `resnet1202`; where a depth is also an ImageNet
ResNet (50, 152) the bare name is the ImageNet one and `cifar_resnet50` the CIFAR one.
"""

import dataclasses
import difflib
import functools
import re
from collections.abc import Callable
from typing import NamedTuple

from cnnjax.models.alexnet import AlexNet
from cnnjax.models.googlenet import GoogLeNet
from cnnjax.models.lenet import LeNet5
from cnnjax.models.resnet import IMAGENET_RESNETS, cifar_resnet
from cnnjax.models.vgg import VGG11, VGG13, VGG16, VGG19

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)


class Entry(NamedTuple):
  constructor: Callable
  input_shape: tuple[int, int, int]  # (H, W, C) the paper designed it for


def _entries():
  entries = {
    "lenet5": Entry(LeNet5, (32, 32, 1)),
    "alexnet": Entry(AlexNet, (227, 227, 3)),
    "alexnet_torchvision": Entry(functools.partial(AlexNet, layout="torchvision", norm="none"), IMAGENET),
  }
  for depth, vgg in ((11, VGG11), (13, VGG13), (16, VGG16), (19, VGG19)):
    entries[f"vgg{depth}"] = Entry(vgg, IMAGENET)
  for depth, vgg in ((11, VGG11), (13, VGG13), (16, VGG16), (19, VGG19)):
    entries[f"vgg{depth}_bn"] = Entry(functools.partial(vgg, norm="batchnorm"), IMAGENET)
  entries["googlenet"] = Entry(GoogLeNet, IMAGENET)
  googlenet_torchvision = functools.partial(GoogLeNet, norm="batchnorm", c5_kernel=3, dropout=0.2, layout="torchvision")
  entries["googlenet_torchvision"] = Entry(googlenet_torchvision, IMAGENET)
  for depth, resnet in IMAGENET_RESNETS.items():
    entries[f"resnet{depth}"] = Entry(resnet, IMAGENET)
  for depth in (18, 34):  # the paper's plain baselines (Table 2)
    entries[f"plain{depth}"] = Entry(functools.partial(IMAGENET_RESNETS[depth], residual=False), IMAGENET)
  for depth in (20, 32, 44, 56, 110):  # the paper's CIFAR-10 depths (Table 6, Fig. 6)
    for kind in ("resnet", "plain"):
      entries[f"{kind}{depth}"] = Entry(cifar_resnet(depth, residual=kind == "resnet"), CIFAR)
  return entries


MODELS = _entries()
_CIFAR_NAME = re.compile(r"(cifar_)?(resnet|plain)(\d+)")


def names() -> list[str]:
  """Every named model, in the zoo's order."""
  return list(MODELS)


def lookup(name: str) -> Entry:
  if name in MODELS:
    return MODELS[name]
  match = _CIFAR_NAME.fullmatch(name)
  if match:
    depth = int(match.group(3))
    if depth >= 8 and (depth - 2) % 6 == 0:  # else fall through to the list of valid names
      return Entry(cifar_resnet(depth, residual=match.group(2) == "resnet"), CIFAR)
  close = difflib.get_close_matches(name, MODELS, n=3)
  hint = f" Did you mean {' or '.join(close)}?" if close else ""
  raise ValueError(
    f"unknown model {name!r}.{hint} Valid models: {', '.join(MODELS)}; "
    "and CIFAR ResNets of any depth 6n+2 as resnetN, plainN, cifar_resnetN, cifar_plainN."
  )


def options(name: str) -> list[str]:
  """The options `create` accepts for `name`: the model's fields."""
  constructor = lookup(name).constructor
  cls = constructor.func if isinstance(constructor, functools.partial) else constructor
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


# Options that the caller of `create` sets, never a config: the dataset decides the classes, training the axis.
NOT_CONFIGURED = ("num_classes", "axis_name")


def defaults(name: str) -> dict:
  """Every option of `name` a config can set, with the value `create(name)` uses when none is given."""
  constructor = lookup(name).constructor
  cls, given = (
    (constructor.func, constructor.keywords) if isinstance(constructor, functools.partial) else (constructor, {})
  )
  return {
    f.name: given.get(f.name, f.default)
    for f in dataclasses.fields(cls)
    if f.name not in ("parent", "name", *NOT_CONFIGURED) and (f.name in given or f.default is not dataclasses.MISSING)
  }


def create(name: str, num_classes: int | None = None, axis_name: str | None = None, **overrides):
  """The model called `name`, with `num_classes` outputs (default: its paper's) and any of its options.
  `axis_name`: the pmap axis its BatchNorm statistics and dropout masks span in training (a model with neither
  ignores it)."""
  valid = options(name)
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f"unknown option(s) {', '.join(unknown)} for model {name!r}; valid: {', '.join(valid)}")
  if num_classes is not None:
    overrides["num_classes"] = num_classes
  if axis_name is not None and "axis_name" in valid:
    overrides["axis_name"] = axis_name
  return lookup(name).constructor(**overrides)


def unsynchronised(model):
  """`model` with BatchNorm statistics of its own batch only, for use outside the pmapped steps."""
  return model.clone(axis_name=None) if hasattr(model, "axis_name") else model


def input_shape(name: str) -> tuple[int, int, int]:
  """(H, W, C) of the input the paper designed `name` for."""
  return lookup(name).input_shape
