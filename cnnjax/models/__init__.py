"""The model zoo: one file per family, all composed from the shared blocks in blocks.py."""
from cnnjax.models.registry import create, input_shape, names, options

__all__ = ["create", "input_shape", "names", "options"]
