"""Random-access sources of {'image': uint8 HWC, 'label': int} examples, one per dataset name.

- tfds names (`mnist`, `cifar10`, `cifar100`, `imagenet2012`, `imagenette`): `builder.as_data_source()`
  over array_record files prepared once with `tfds build` (TensorFlow is needed only for that step);
- `digits`: the bundled offline dataset (cnnjax/data/digits.py), prepared on first use without TensorFlow;
- `imagefolder:/path`: the user's PNG/JPEG files, one sub-folder per class, under train/ and test/;
- `fake` or `fake:HxWxC:CLASSES`: random images, for benchmarks.
"""
import contextlib
import dataclasses
import logging
import os
import pathlib
from typing import Any, Sequence

import numpy as np

# Per-channel mean and std in 0..255 units, from each training set.
IMAGENET_STATS = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


@dataclasses.dataclass(frozen=True)
class Spec:
  """How a named dataset is read and preprocessed."""

  style: str  # 'cifar', 'imagenet' or 'small' (pad or resize to the model, no augmentation)
  stats: tuple = IMAGENET_STATS
  test_split: str = "test"
  tfds_name: str | None = None


TFDS = {
    "mnist": Spec("small", ((33.32,), (78.57,)), tfds_name="mnist"),
    "cifar10": Spec("cifar", ((125.31, 122.95, 113.87), (62.99, 62.09, 66.70)), tfds_name="cifar10"),
    "cifar100": Spec("cifar", ((129.30, 124.07, 112.43), (68.17, 65.39, 70.42)), tfds_name="cifar100"),
    "imagenet2012": Spec("imagenet", test_split="validation", tfds_name="imagenet2012"),
    "imagenette": Spec("imagenet", test_split="validation", tfds_name="imagenette"),
}
NAMES = ("digits", *TFDS, "imagefolder:/path", "fake", "fake:HxWxC:CLASSES")

PREPARE = {
    "imagenet2012": (
        "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from image-net.org into a folder DIR, then\n"
        "  tfds build imagenet2012 --file_format=array_record --data_dir={data_dir} --manual_dir=DIR"
    ),
}


class DatasetError(ValueError):
  """A dataset that cannot be read as asked: the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Sequence[dict]
  test: Sequence[dict]
  num_classes: int
  spec: Spec


def load(name: str, data_dir: str | None = None) -> Dataset:
  """The dataset called `name` (see NAMES); raises DatasetError with what to do when it cannot."""
  if name == "digits":
    return _digits(data_dir)
  if name in TFDS:
    return _tfds(name, data_dir)
  if name.startswith("imagefolder:"):
    return _image_folder(name.split(":", 1)[1])
  if name == "fake" or name.startswith("fake:"):
    return _fake(name)
  raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}")


@contextlib.contextmanager
def _quiet_absl():
  """tfds warns about every version folder it looks for and does not find: our own message says it better."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _tfds(name: str, data_dir: str | None) -> Dataset:
  import tensorflow_datasets as tfds

  spec = TFDS[name]
  with _quiet_absl():
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    root, prepared = builder.data_dir_root, builder.is_prepared()
  files = list(pathlib.Path(builder.data_dir).glob("*.array_record*")) if prepared else []
  if not files:
    how = PREPARE.get(name, "tfds build {name} --file_format=array_record --data_dir={data_dir}")
    found = " (it is prepared there, but not as array_record files)" if prepared else ""
    raise DatasetError(
        f"dataset {name!r} is not prepared in {builder.data_dir}{found}.\n"
        f"Prepare it once (this step needs TensorFlow: pip install -e '.[prepare]'):\n"
        f"  {how.format(name=spec.tfds_name, data_dir=root)}\n"
        f"(set TFDS_DATA_DIR or the config's data_dir to read another directory). Or run offline on the bundled "
        f"'digits' dataset: --config=configs/NAME.py:local."
    )
  source = builder.as_data_source()
  return Dataset(name, source["train"], source[spec.test_split], builder.info.features["label"].num_classes, spec)


def _digits(data_dir: str | None) -> Dataset:
  import tensorflow_datasets as tfds

  from cnnjax.data.digits import Digits

  builder = Digits(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():  # offline and about a second: prepare on first use
    tfds.display_progress_bar(False)
    try:
      builder.download_and_prepare()
    except FileExistsError:  # another process (a parallel sweep run) finished preparing it first
      builder = Digits(data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        raise
  source = builder.as_data_source()
  images = np.stack([source["train"][i]["image"] for i in range(len(source["train"]))]).astype(np.float64)
  stats = (tuple(images.mean(axis=(0, 1, 2)).tolist()), tuple(images.std(axis=(0, 1, 2)).tolist()))
  return Dataset("digits", source["train"], source["test"], 10, Spec("small", stats))


class ArraySource:
  """Examples held in memory as uint8 [N, H, W, C] images and integer labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, np.asarray(labels, np.int32)
    self.image_shape = images.shape[1:]

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": int(self.labels[i])}

  def read_batch(self, indices):
    return {"image": self.images[indices], "label": self.labels[indices]}


class FakeSource:
  """`length` random images drawn from a fixed pool (cheap at any size), with labels i % num_classes."""

  def __init__(self, length: int, shape: tuple, num_classes: int, seed: int):
    self.length, self.num_classes, self.image_shape = length, num_classes, tuple(shape)
    self.pool = np.random.default_rng(seed).integers(0, 256, (64, *shape), dtype=np.uint8)

  def __len__(self):
    return self.length

  def __getitem__(self, i):
    return {"image": self.pool[i % len(self.pool)], "label": i % self.num_classes}

  def read_batch(self, indices):
    return {"image": self.pool[indices % len(self.pool)], "label": (indices % self.num_classes).astype(np.int32)}


def _fake(name: str) -> Dataset:
  shape, classes = (32, 32, 3), 10
  if name != "fake":
    try:
      _, dims, count = name.split(":")
      shape, classes = tuple(int(d) for d in dims.lower().split("x")), int(count)
      assert len(shape) == 3 and classes > 0
    except (ValueError, AssertionError):
      raise DatasetError(f"cannot read {name!r}: write fake:HxWxC:CLASSES, e.g. fake:224x224x3:1000") from None
  stats = ((127.5,) * shape[2], (73.6,) * shape[2])  # uniform over 0..255
  return Dataset(name, FakeSource(10_000, shape, classes, 0), FakeSource(1_000, shape, classes, 1), classes, Spec("small", stats))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFiles:
  """Image files decoded on access to uint8 RGB."""

  def __init__(self, files: Sequence[tuple[str, int]]):
    self.files = list(files)

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    path, label = self.files[i]
    try:
      with Image.open(path) as image:
        return {"image": np.asarray(image.convert("RGB")), "label": label}
    except (UnidentifiedImageError, OSError) as e:
      raise DatasetError(f"cannot decode image {path}: {e}") from None


def _class_files(folder: pathlib.Path) -> dict[str, list[str]]:
  return {
      d.name: sorted(str(f) for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
      for d in sorted(folder.iterdir())
      if d.is_dir()
  }


def _image_folder(path: str, test_fraction: float = 0.1) -> Dataset:
  """One sub-folder per class under path/train and path/test, or directly under path (then a fixed
  10% of each class is held out for test)."""
  root = pathlib.Path(os.path.expanduser(path))
  if not root.is_dir():
    raise DatasetError(f"image folder {root} does not exist")
  if (root / "train").is_dir():
    train, test = _class_files(root / "train"), _class_files(root / "test") if (root / "test").is_dir() else None
    if test is not None and set(train) != set(test):
      raise DatasetError(
          f"the class folders of {root / 'train'} and {root / 'test'} differ: only in train: "
          f"{sorted(set(train) - set(test)) or 'none'}; only in test: {sorted(set(test) - set(train)) or 'none'}"
      )
  else:
    train, test = _class_files(root), None
  classes = sorted(train)
  empty = [c for c in classes if not train[c]]
  if not classes or empty:
    what = f"class folders without PNG/JPEG files: {', '.join(empty)}" if classes else "no class sub-folders"
    raise DatasetError(f"image folder {root} has {what}; expected CLASS/*.png or train/CLASS/*.jpg ...")
  if test is None:
    rng = np.random.default_rng(0)
    test = {}
    for c in classes:
      files = list(rng.permutation(train[c]))
      held = max(1, round(len(files) * test_fraction)) if len(files) > 1 else 0
      test[c], train[c] = files[:held], files[held:]
  label = {c: i for i, c in enumerate(classes)}
  pairs = lambda split: [(f, label[c]) for c in classes for f in split[c]]
  return Dataset(f"imagefolder:{root}", ImageFiles(pairs(train)), ImageFiles(pairs(test)), len(classes), Spec("imagenet"))
