"""Datasets and input pipelines: tfds (array_record) as storage, grain as the loader. Knows no model."""

from cnnjax.data.pipeline import PROTOCOL_VIEWS, Layout, check_protocol, eval_batches, reading, train_batches
from cnnjax.data.sources import NAMES, Dataset, DatasetError, load, style, subset, uses_data_dir
from cnnjax.data.transforms import normalize

__all__ = [
  "NAMES",
  "PROTOCOL_VIEWS",
  "Dataset",
  "DatasetError",
  "Layout",
  "check_protocol",
  "eval_batches",
  "load",
  "normalize",
  "reading",
  "style",
  "subset",
  "train_batches",
  "uses_data_dir",
]
