"""grain pipelines that turn a Dataset into batches for a pmapped step.

Training: global batches of example indices, shuffled per epoch from the seed and the same on every host;
each host reads and preprocesses its own rows of each, batched to [local_devices, per_device_batch, H, W, C]
with labels [local_devices, per_device_batch]. Everything random is seeded by (seed, example or batch index), so a
step's batch never depends on what ran before it, and the iterator's state (grain's get_state/set_state)
is all a checkpoint needs to resume with exactly the batches an uninterrupted run would have seen.

Evaluation: every test example exactly once. Each host reads ceil(N / process_count) slots, padded to
whole batches; padded slots carry mask 0. Every host yields the same number of batches, so pmapped
collectives in the eval step line up.
"""

import contextlib
import dataclasses
import functools
import math

import grain
import numpy as np

from cnnjax.data import recipes, transforms
from cnnjax.data.sources import Dataset


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a global batch is split: over processes (hosts), then over each host's devices."""

  global_batch: int
  local_devices: int = 1
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.global_batch % (self.process_count * self.local_devices):
      raise ValueError(
        f"batch size {self.global_batch} does not split evenly over {self.process_count} host(s) x "
        f"{self.local_devices} device(s); use a multiple of {self.process_count * self.local_devices}"
      )

  def check_fits(self, dataset: Dataset):
    """ValueError for a global batch larger than the training split: each batch would repeat its examples."""
    examples, split = len(dataset.train), self.process_count * self.local_devices
    if self.global_batch > examples:
      largest = examples // split * split
      raise ValueError(
        f"batch size {self.global_batch:,} is larger than the {examples:,} training examples of {dataset.name}: "
        f"the largest batch that fits is {largest:,} ({largest // split:,} per device on {split} device(s))"
      )

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def for_devices(self, batch: dict) -> dict:
    """[local_batch, ...] arrays -> [local_devices, per_device_batch, ...]."""
    return {k: v.reshape(self.local_devices, -1, *v.shape[1:]) for k, v in batch.items()}


def fit_example(
  example: dict, input_shape, style: str, recipe: str = "none", rng: np.random.Generator | None = None
) -> np.ndarray:
  """One example's image brought to the model's (H, W, C): the per-example part of each dataset's preprocessing. An
  ImageNet-style photo goes through the training `recipe` (cnnjax.data.recipes; 'none': the test's centre crop)."""
  size, _, channels = input_shape
  image = example["image"]
  if style == "imagenet":
    image = recipes.TRAINING[recipe](image, rng, size)
  elif image.shape[:2] != (size, size):
    # MNIST's 28x28 digits are padded into LeNet-5's 32x32 field; other sizes are resized
    small_margin = image.shape[0] < size <= image.shape[0] + 4
    image = (
      transforms.center_pad(image, size) if style == "small" and small_margin else transforms.resize(image, size, size)
    )
  return transforms.to_channels(image, channels)


def read_batch(
  source, indices, input_shape, style: str, recipe: str = "none", rng=None, first: int = 0, protocol: str = "center"
) -> dict:
  """Examples `indices` of `source` as {'image': uint8 [B, H, W, C], 'label': int32 [B]}.

  In-memory sources hand over whole arrays (`read_batch` of their own); tfds sources read their records
  in one batched call; images that are not yet the model's size go through `fit_example` one by one. Random
  crops of row first + i of the global batch use a generator seeded by (one draw of `rng`, first + i), so a
  host reading rows first.. crops them as a single host would. (Not rng.spawn: a generator's children are
  numbered across all its spawns, so they would depend on what this process spawned before.)
  """
  indices = np.asarray(indices)
  direct = style != "imagenet" and protocol == "center"
  if hasattr(source, "read_batch") and source.image_shape == tuple(input_shape) and direct:
    return source.read_batch(indices)
  records = (
    source.__getitems__(indices.tolist()) if hasattr(source, "__getitems__") else [source[int(i)] for i in indices]
  )
  rngs = [None] * len(records)
  if rng is not None and style == "imagenet" and recipe != "none":
    key = int(rng.integers(2**63))  # every host makes this one draw from the batch's generator
    rngs = [np.random.default_rng([key, first + i]) for i in range(len(records))]
  if protocol != "center":
    images = [recipes.eval_views(r["image"], input_shape, style, protocol) for r in records]
  else:
    images = [
      r["image"]
      if r["image"].shape == tuple(input_shape) and direct
      else fit_example(r, input_shape, style=style, recipe=recipe, rng=g)
      for r, g in zip(records, rngs)
    ]
  return {"image": np.stack(images), "label": np.array([r["label"] for r in records], np.int32)}


def train_batches(
  dataset: Dataset, input_shape, layout: Layout, seed: int, augment: str = "none", workers: int = 0, prefetch: int = 4
) -> grain.IterDataset:
  """An endless, checkpointable stream of training batches for this host, made by the training recipe `augment`.

  grain shuffles and batches example *indices* (cheap) into global batches, the same on every host; each
  host reads and preprocesses its own rows of each, with a generator seeded by (seed, batch index) whose
  draws are made for the whole global batch. So a global batch does not depend on how many hosts share it,
  and every host's iterator state is the same.
  """
  input_shape, train, style = tuple(input_shape), dataset.train, dataset.spec.style
  recipes.check_recipe(augment, style)
  indices = grain.MapDataset.range(len(train)).seed(seed).shuffle().repeat(None)  # a new permutation every epoch
  first = layout.process_index * layout.local_batch

  def load(global_indices, rng):
    rows = global_indices[first : first + layout.local_batch]
    batch = read_batch(train, rows, input_shape=input_shape, style=style, recipe=augment, rng=rng, first=first)
    if augment == "cifar" and style == "cifar":
      batch["image"] = transforms.pad_crop_flip(batch["image"], rng, first=first, total=layout.global_batch)
    return layout.for_devices(batch)

  ds = indices.batch(layout.global_batch, drop_remainder=True).random_map(load)
  return _iterate(ds, workers, prefetch)


def eval_batch_count(num_examples: int, layout: Layout) -> int:
  """Batches each host yields to cover num_examples once: the same on every host."""
  return math.ceil(math.ceil(num_examples / layout.process_count) / layout.local_batch)


def eval_batches(
  dataset: Dataset, input_shape, layout: Layout, workers: int = 0, prefetch: int = 4, protocol: str = "center"
) -> grain.IterDataset:
  """The test split once, in order, this host's share; each batch has 'mask' (1 real, 0 padding). With a protocol
  of several views, 'image' is [..., views, H, W, C]."""
  input_shape, test, style = tuple(input_shape), dataset.test, dataset.spec.style
  slots = eval_batch_count(len(test), layout) * layout.local_batch
  views = recipes.PROTOCOL_VIEWS[protocol]

  def load(slot_indices):
    indices = layout.process_index + np.asarray(slot_indices) * layout.process_count
    real = indices[indices < len(test)]
    read = functools.partial(read_batch, input_shape=input_shape, style=style, protocol=protocol)
    batch = read(test, real) if len(real) else None
    padding = len(indices) - len(real)
    images = np.zeros((len(indices), *([views] if views > 1 else []), *input_shape), np.uint8)
    labels = np.zeros(len(indices), np.int32)
    if batch is not None:
      images[: len(real)], labels[: len(real)] = batch["image"], batch["label"]
    mask = np.concatenate([np.ones(len(real), np.float32), np.zeros(padding, np.float32)])
    return layout.for_devices({"image": images, "label": labels, "mask": mask})

  ds = grain.MapDataset.range(slots).batch(layout.local_batch).map(load)
  return _iterate(ds, workers, prefetch)


def _iterate(ds: grain.MapDataset, workers: int, prefetch: int) -> grain.IterDataset:
  """A background thread reads `prefetch` batches ahead; with workers > 0, that many processes produce them.

  One thread: more contend for the GIL (CIFAR-style batches: 58k img/s with one, 34k with four, on 2 cores).
  """
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  if workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


@contextlib.contextmanager
def reading(batches: grain.IterDataset):
  """An iterator over `batches` whose read-ahead threads and worker processes are stopped and joined when the
  block ends, so nothing reads the data after its consumer is done with it (a temporary folder removed, a
  workdir closed)."""
  iterator = iter(batches)
  try:
    yield iterator
  finally:
    iterator.close()
    # grain's close() cancels the reads not yet started but does not wait for a running one: wait for it
    executor = getattr(iterator, "_executor", None)
    if executor is not None:
      executor.shutdown(wait=True)
