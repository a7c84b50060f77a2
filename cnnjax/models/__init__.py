"""The model zoo: one file per family, all composed from the shared blocks in blocks.py."""
from cnnjax.models.registry import create, defaults, input_shape, names, options

__all__ = ["create", "defaults", "input_shape", "names", "options"]
