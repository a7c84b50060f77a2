"""The model zoo: one file per family, all composed from the shared blocks in blocks.py."""

from cnnjax.models.pretrained import from_torchvision
from cnnjax.models.registry import create, defaults, input_shape, names, options, unsynchronised

__all__ = ["create", "defaults", "from_torchvision", "input_shape", "names", "options", "unsynchronised"]
