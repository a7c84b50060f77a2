"""Random-access sources of {'image': uint8 HWC, 'label': int} examples, one per dataset name.

- tfds names (`mnist`, `cifar10`, `cifar100`, `imagenet2012`, `imagenette`): `builder.as_data_source()`
  over array_record files prepared once with `tfds build` (TensorFlow is needed only for that step); a gs://
  data directory's dataset is read from a local copy (cnnjax.cloud.local_data_dir);
- `digits`: the bundled offline dataset (cnnjax/data/digits.py), prepared on first use without TensorFlow;
- `imagefolder:/path`: the user's PNG/JPEG files, one sub-folder per class, under train/ and test/;
- `fake` or `fake:HxWxC:CLASSES`: random images, for benchmarks.
"""

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from cnnjax import cloud
from cnnjax.errors import DatasetError
from cnnjax.workdir import is_remote

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


def style(name: str) -> str:
  """How dataset `name` is preprocessed ('cifar', 'imagenet' or 'small'), known without reading it."""
  if name in TFDS:
    return TFDS[name].style
  return "imagenet" if name.startswith("imagefolder:") else "small"


def uses_data_dir(name: str) -> bool:
  """Whether dataset `name` is read from a tfds data directory (the config's data_dir)."""
  return name in TFDS or name == "digits"


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Sequence[dict]
  test: Sequence[dict]
  num_classes: int
  spec: Spec
  class_names: tuple[str, ...] = ()  # label index -> name, where the dataset has names

  def normalization(self, channels: int) -> tuple[tuple, tuple]:
    """The per-channel mean and std of the images, for a model that reads `channels` channels (a colour
    dataset's averaged for one channel, a grey one's repeated for three)."""
    mean, std = (np.asarray(s, np.float64) for s in self.spec.stats)
    if len(mean) != channels:
      mean, std = (np.full(channels, s.mean()) for s in (mean, std))
    return tuple(mean.tolist()), tuple(std.tolist())


def imagenet_classes() -> dict[str, str]:
  """ImageNet's 1000 classes in label order: WordNet id -> the name torchvision gives it (shipped with cnnjax)."""
  return dict(
    line.split("\t") for line in (pathlib.Path(__file__).parent / "imagenet_classes.tsv").read_text().splitlines()
  )


def readable_names(names) -> tuple[str, ...]:
  """Class names as people read them: ImageNet's WordNet ids (imagenet2012's and imagenette's labels) become
  their names ('n01440764' -> 'tench'), other names stay as they are."""
  table = imagenet_classes()
  return tuple(table.get(n, n) for n in names)


def load(name: str, data_dir: str | None = None, bad_images: str = "skip") -> Dataset:
  """The dataset called `name` (see NAMES); raises DatasetError with what to do when it cannot. `bad_images`:
  what an image folder does with files that cannot be decoded, 'skip' (with a warning) or 'stop'."""
  if name == "digits":
    return _digits(data_dir)
  if name in TFDS:
    return _tfds(name, data_dir)
  if name.startswith("imagefolder:"):
    return image_folder(name.split(":", 1)[1], bad_images=bad_images)
  if name == "fake" or name.startswith("fake:"):
    return _fake(name)
  if not name:  # a config that leaves the choice to the user (configs/finetune.py)
    raise DatasetError(
      f"no dataset given: set --config.dataset (your images: imagefolder:/path); valid: {', '.join(NAMES)}"
    )
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
  files = list(epath.Path(builder.data_dir).glob("*.array_record*")) if prepared else []
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
  if is_remote(builder.data_dir):
    builder = tfds.builder(spec.tfds_name, data_dir=cloud.local_data_dir(root, builder.data_dir))
  source = builder.as_data_source()
  label = builder.info.features["label"]
  return Dataset(
    name,
    train=source["train"],
    test=source[spec.test_split],
    num_classes=label.num_classes,
    spec=spec,
    class_names=readable_names(label.names),
  )


def _digits(data_dir: str | None) -> Dataset:
  import tensorflow_datasets as tfds

  from cnnjax.data.digits import Digits

  if data_dir and is_remote(data_dir):  # a copy of the bucket's, or prepared in that copy's place
    data_dir = cloud.local_data_dir(data_dir, Digits(data_dir=data_dir, file_format="array_record").data_dir)
  with _quiet_absl():  # tfds warns about the version folder it is about to prepare
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
  return Dataset(
    "digits",
    train=source["train"],
    test=source["test"],
    num_classes=10,
    spec=Spec(style("digits"), stats),
    class_names=tuple("0123456789"),
  )


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
  return Dataset(
    name,
    train=FakeSource(10_000, shape, num_classes=classes, seed=0),
    test=FakeSource(1_000, shape, num_classes=classes, seed=1),
    num_classes=classes,
    spec=Spec(style(name), stats),
  )


BAD_IMAGES = ("skip", "stop")


def image_suffixes() -> frozenset[str]:
  """Every file suffix Pillow can read: .png, .jpg, .jpeg, .webp, .bmp, .tif, .gif, .ppm, ..."""
  from PIL import Image

  Image.init()
  return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class ImageFiles:
  """Image files decoded on access to uint8 RGB (a multi-frame GIF or TIFF gives its first frame).

  A file that cannot be decoded (a truncated JPEG) stops the run with bad_images='stop'; with 'skip' it is
  reported once and the next file in the list stands in for it, so a batch keeps its size and a rerun reads
  the same examples."""

  def __init__(self, files: Sequence[tuple[str, int]], bad_images: str = "skip"):
    self.files, self.bad_images = list(files), bad_images
    self._reported = set()

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i) -> dict[str, Any]:
    for k in range(len(self.files)):
      path, label = self.files[(i + k) % len(self.files)]
      try:
        return {"image": decode_image(path), "label": label}
      except DatasetError as e:
        if self.bad_images == "stop":
          raise DatasetError(f"{e} (the config's bad_images='skip' skips such files instead)") from None
        if path not in self._reported:
          self._reported.add(path)
          print(f"warning: {e}; skipped, the next file stands in for it", file=sys.stderr, flush=True)
    raise DatasetError(f"none of the {len(self.files)} images can be decoded")


def decode_image(path: str) -> np.ndarray:
  """One image file as uint8 RGB; DatasetError naming the file and the cause if it cannot be read."""
  from PIL import Image

  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except Exception as e:  # a damaged file can fail anywhere in a decoder (OSError, ValueError, a decompression bomb...)
    raise DatasetError(f"cannot decode image {path}: {e}") from None


def _readable_header(path: str) -> str | None:
  """None if Pillow recognises the file's header (cheap: nothing is decoded), else why not."""
  from PIL import Image

  try:
    with Image.open(path):
      return None
  except Exception as e:  # as decode_image
    return str(e) or type(e).__name__


def _class_files(folder: pathlib.Path, suffixes, others: list) -> dict[str, list[str]]:
  """{class: its image files} for each sub-folder; files of other suffixes go to `others` (hidden ones aside)."""
  classes = {}
  for d in sorted(folder.iterdir()):
    if d.is_dir():
      files = sorted(f for f in d.rglob("*") if f.is_file() and not f.name.startswith("."))
      classes[d.name] = [str(f) for f in files if f.suffix.lower() in suffixes]
      others.extend(str(f) for f in files if f.suffix.lower() not in suffixes)
  return classes


def _drop_unreadable(splits: list[dict[str, list[str]]], root, bad_images: str):
  """Check every file's header once, in parallel; report the unreadable ones together, then leave them out
  ('skip') or stop ('stop'). A file whose header reads but whose data is cut short is found when it is decoded."""
  files = [f for split in splits for c in split.values() for f in c]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    bad = {f: why for f, why in zip(files, pool.map(_readable_header, files)) if why}
  if not bad:
    return
  listing = "; ".join(f"{f}: {why}" for f, why in list(bad.items())[:5]) + (
    f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
  )
  if bad_images == "stop":
    raise DatasetError(
      f"image folder {root}: {len(bad)} of {len(files)} files cannot be read as images: {listing} "
      "(the config's bad_images='skip' leaves them out instead)"
    )
  print(
    f"warning: image folder {root}: {len(bad)} of {len(files)} files cannot be read as images, left out: {listing}",
    file=sys.stderr,
    flush=True,
  )
  for split in splits:
    for c in split:
      split[c] = [f for f in split[c] if f not in bad]


def image_folder(path: str, test_fraction: float = 0.1, bad_images: str = "skip") -> Dataset:
  """One sub-folder per class under path/train and path/test, or directly under path (then a fixed 10% of each
  class is held out for test). Every format Pillow reads counts as an image; other files are listed and left
  out, and files that are not readable images are handled as `bad_images` says (see _drop_unreadable)."""
  if bad_images not in BAD_IMAGES:
    raise ValueError(f"unknown bad_images {bad_images!r}; valid: {', '.join(BAD_IMAGES)}")
  root = pathlib.Path(os.path.expanduser(path))
  if not root.is_dir():
    raise DatasetError(f"image folder {root} does not exist")
  suffixes, others = image_suffixes(), []
  if (root / "train").is_dir():
    train = _class_files(root / "train", suffixes, others)
    test = _class_files(root / "test", suffixes, others) if (root / "test").is_dir() else None
    if test is not None and set(train) != set(test):
      raise DatasetError(
        f"the class folders of {root / 'train'} and {root / 'test'} differ: only in train: "
        f"{sorted(set(train) - set(test)) or 'none'}; only in test: {sorted(set(test) - set(train)) or 'none'}"
      )
  else:
    train, test = _class_files(root, suffixes, others), None
  if others:
    print(
      f"note: image folder {root}: {len(others)} file(s) that are not images left out: "
      f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}",
      file=sys.stderr,
      flush=True,
    )
  _drop_unreadable([train] + ([test] if test is not None else []), root, bad_images)
  classes = sorted(train)
  empty = [c for c in classes if not train[c]]
  if not classes or empty:
    what = f"class folders without image files: {', '.join(empty)}" if classes else "no class sub-folders"
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
  return Dataset(
    f"imagefolder:{root}",
    train=ImageFiles(pairs(train), bad_images),
    test=ImageFiles(pairs(test), bad_images),
    num_classes=len(classes),
    spec=Spec(style("imagefolder:")),
    class_names=tuple(classes),
  )


class Subset:
  """The examples `indices` of `source`, their labels renumbered by `relabel` (original label -> new)."""

  def __init__(self, source, indices: np.ndarray, relabel: dict[int, int]):
    self.source, self.indices, self.relabel = source, np.asarray(indices), relabel

  def __len__(self):
    return len(self.indices)

  def _relabelled(self, record: dict) -> dict:
    return {**record, "label": self.relabel[int(record["label"])]}

  def __getitem__(self, i):
    return self._relabelled(self.source[int(self.indices[i])])

  def __getitems__(self, indices):
    rows = [int(self.indices[i]) for i in indices]
    records = self.source.__getitems__(rows) if hasattr(self.source, "__getitems__") else [self.source[r] for r in rows]
    return [self._relabelled(r) for r in records]


def _labels(source) -> np.ndarray:
  if hasattr(source, "labels"):  # in memory
    return np.asarray(source.labels)
  everything = range(len(source))
  records = (
    source.__getitems__(list(everything)) if hasattr(source, "__getitems__") else [source[i] for i in everything]
  )
  return np.array([r["label"] for r in records])


def subset(dataset: Dataset, classes=(), shots: int = 0) -> Dataset:
  """`dataset` restricted to `classes` (their original label indices, renumbered 0.. in the order given; () keeps
  all) with the first `shots` training examples of each (0: all of them); the test split keeps every example of
  those classes. A transfer task from one dataset: pretrain on some classes, fine-tune on few examples of others.
  Finding the labels reads each example once (a moment for digits or CIFAR; long for ImageNet)."""
  classes = [int(c) for c in classes] or list(range(dataset.num_classes))
  if not all(0 <= c < dataset.num_classes for c in classes) or len(set(classes)) != len(classes):
    raise DatasetError(
      f"classes {tuple(classes)} must be distinct labels of {dataset.name}, from 0 to {dataset.num_classes - 1}"
    )
  relabel = {c: i for i, c in enumerate(classes)}

  def keep(source, shots):
    labels = _labels(source)
    rows = [np.flatnonzero(labels == c)[: shots or None] for c in classes]
    return Subset(source, np.sort(np.concatenate(rows)), relabel)

  names = tuple(dataset.class_names[c] for c in classes) if dataset.class_names else ()
  return dataclasses.replace(
    dataset, train=keep(dataset.train, shots), test=keep(dataset.test, 0), num_classes=len(classes), class_names=names
  )
