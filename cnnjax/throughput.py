"""How fast the input pipeline is on its own, without a model.

    python -m cnnjax.throughput --style=cifar                        # uint8 arrays in memory, pad/crop/flip
    python -m cnnjax.throughput --style=imagenet --workers=2         # JPEG files, random-resized crop to 224
    python -m cnnjax.throughput --style=imagenet --augment=vgg       # another paper's training recipe
    python -m cnnjax.throughput --style=imagenet --augment=all       # every recipe, a table

Prints img/s and, without workers, img/s per CPU-second of this process (per core). Whether the pipeline keeps
a train step fed is `python -m cnnjax.bench --input=real` against `--input=fake` (launch/gpu_bench.sh does it
on JPEG files written by `imagenet_like`).
"""

import pathlib
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

from cnnjax import cli, data
from cnnjax.data import recipes
from cnnjax.data.sources import IMAGENET_STATS, TFDS, ArraySource, Dataset, Spec, image_folder

FLAGS = flags.FLAGS


def cifar_like(n: int = 50_000) -> Dataset:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  source = ArraySource(images, rng.integers(0, 10, n))
  return Dataset("cifar-like", train=source, test=source, num_classes=10, spec=TFDS["cifar10"])


def imagenet_like(folder: str, n: int = 256, classes: int = 10, portraits: bool = False) -> Dataset:
  """n JPEG files of 375x500 (ImageNet's most common size; with `portraits`, every third 500x375) in `classes` class
  folders, smooth noise so they compress like photos."""
  rng = np.random.default_rng(0)
  for i in range(n):
    path = pathlib.Path(folder) / f"c{i % classes}"
    path.mkdir(exist_ok=True)
    small = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    size = (375, 500) if portraits and i % 3 == 2 else (500, 375)
    small.resize(size, Image.BILINEAR).save(path / f"{i}.jpg", quality=90)
  dataset = image_folder(folder, test_fraction=0.0)
  return Dataset(
    "imagenet-like", train=dataset.train, test=dataset.test, num_classes=classes, spec=Spec("imagenet", IMAGENET_STATS)
  )


def _time(iterator, steps: int):
  for _ in range(5):
    next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(iterator)
  return time.perf_counter() - wall, time.process_time() - cpu


def measure(dataset: Dataset, shape, batch: int, steps: int, workers: int, augment: str) -> dict:
  images = batch * steps
  stream = data.train_batches(dataset, shape, data.Layout(batch), seed=0, augment=augment, workers=workers)
  with data.reading(stream) as batches:
    wall, cpu = _time(batches, steps)
  result = {"pipeline_img_per_s": images / wall}
  if not workers:  # with workers the work happens in other processes, whose CPU time this one cannot see
    result["pipeline_img_per_cpu_s"] = images / cpu
  return result


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_enum(
    "style", "cifar", ["cifar", "imagenet"], "CIFAR-style arrays in memory, or ImageNet-style JPEG files."
  )
  flags.DEFINE_integer("batch", 128, "Global batch size.")
  flags.DEFINE_integer("steps", 100, "Batches to time (after 5 of warm-up).")
  flags.DEFINE_integer("workers", 0, "grain worker processes.")
  flags.DEFINE_list(
    "augment",
    [],
    "Training recipes to time (one row each; 'all': every recipe the style takes); default: cifar for "
    "--style=cifar, inception for imagenet.",
  )


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as folder:
    if FLAGS.style == "cifar":
      dataset, shape = cifar_like(), (32, 32, 3)
    else:
      dataset, shape = imagenet_like(folder), (224, 224, 3)
    takes = recipes.IMAGENET_RECIPES if FLAGS.style == "imagenet" else recipes.CIFAR_RECIPES
    chosen = (
      takes if FLAGS.augment == ["all"] else FLAGS.augment or [takes[0] if FLAGS.style == "cifar" else "inception"]
    )
    results = {
      augment: measure(dataset, shape, batch=FLAGS.batch, steps=FLAGS.steps, workers=FLAGS.workers, augment=augment)
      for augment in chosen
    }
  if len(results) == 1:
    for key, value in next(iter(results.values())).items():
      print(f"{key:24s} {value:10.0f}")
    return
  keys = list(next(iter(results.values())))
  print("| recipe | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for augment, result in results.items():
    print(f"| `{augment}` | " + " | ".join(f"{result[k]:.0f}" for k in keys) + " |")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
