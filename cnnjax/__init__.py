"""cnnjax: the ImageNet-winning CNNs in JAX/Flax. WORKSPACE.md is the map of the package."""

from cnnjax import cloud

cloud.configure_environment()  # before any gs:// client is imported
