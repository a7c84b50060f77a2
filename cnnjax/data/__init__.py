"""Datasets and input pipelines: tfds (array_record) as storage, grain as the loader. Knows no model."""

from cnnjax.data.pipeline import Layout, eval_batches, reading, train_batches
from cnnjax.data.recipes import PROTOCOLS, RECIPES, check_protocol, check_recipe, views_per_image
from cnnjax.data.sources import NAMES, Dataset, DatasetError, load, style, subset, uses_data_dir
from cnnjax.data.transforms import normalize

__all__ = [
  "NAMES",
  "PROTOCOLS",
  "RECIPES",
  "Dataset",
  "DatasetError",
  "Layout",
  "check_protocol",
  "check_recipe",
  "eval_batches",
  "load",
  "normalize",
  "reading",
  "style",
  "subset",
  "train_batches",
  "uses_data_dir",
  "views_per_image",
]
