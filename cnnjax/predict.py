"""python -m cnnjax.predict --workdir=W IMAGE...   or   --model=NAME --weights=FILE IMAGE...

The five most probable classes of each image, with their names and probabilities: a table, or with
--format=json one JSON object per line, {"image": PATH, "top": [{"index", "label", "probability"}, ...]}.
Each image gets the model's evaluation preprocessing: for ImageNet networks torchvision's (shorter side to 256
with PIL's antialiased bilinear resize, centre crop 224, ImageNet mean and std), so torchvision's weights give
torchvision's probabilities; for a workdir cnnjax trained, that dataset's (digits, an image folder, ...) and its
class names. An image that cannot be read is one line on stderr; the others are still predicted, and the exit
status is 1.
"""

import json
import sys

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from cnnjax import checkpoint, cli, data, models
from cnnjax import config as config_lib
from cnnjax.data import pipeline, sources
from cnnjax.models import pretrained

FLAGS = flags.FLAGS
IMAGENET = "imagenet2012"


class Predictor:
  """A model with its variables, input shape, preprocessing style, normalisation and class names."""

  def __init__(self, model_name: str, model, variables, input_shape, dataset: data.Dataset):
    self.model_name, self.model, self.variables, self.input_shape, self.dataset = (
      model_name,
      model,
      variables,
      tuple(input_shape),
      dataset,
    )
    self._apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)[0].astype("float32")))

  @classmethod
  def from_torchvision(cls, name: str, weights):
    model, variables = pretrained.from_torchvision(name, weights)
    return cls(name, model, variables, models.input_shape(name), _described(IMAGENET, None, model.num_classes))

  @classmethod
  def from_workdir(cls, workdir: str):
    config = config_lib.from_workdir(workdir)
    dataset = _described(config.dataset, config.data_dir or None)
    if config.classes:
      dataset = data.subset(dataset, config.classes)
    model = models.create(config.model, num_classes=dataset.num_classes, **config.model_options)  # as train.build does
    variables = checkpoint.latest_variables(workdir)
    return cls(config.model, model, variables, (config.image_size, config.image_size, config.channels), dataset)

  @property
  def config_name(self) -> str:
    """What the picture or table shows, in words: 'resnet50 on imagenet2012'."""
    return f"{self.model_name} on {self.dataset.name}"

  def model_input(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the image as the model sees it: uint8 at its input size, the normalised [1, H, W, C] batch)."""
    fitted = pipeline.fit_example({"image": image}, self.input_shape, self.dataset.spec.style)
    mean, std = self.dataset.normalization(self.input_shape[2])  # the run's own statistics
    return fitted, data.normalize(fitted[None], mean, std)

  def probabilities(self, image: np.ndarray) -> np.ndarray:
    """Class probabilities of one uint8 HWC image."""
    return np.asarray(self._apply(self.variables, self.model_input(image)[1]))[0]

  def top(self, image: np.ndarray, k: int = 5) -> list[dict]:
    probs = self.probabilities(image)
    names = self.dataset.class_names
    return [
      {"index": int(i), "label": names[i] if i < len(names) else f"class {i}", "probability": float(probs[i])}
      for i in np.argsort(-probs, kind="stable")[:k]
    ]


def _described(name: str, data_dir: str | None, num_classes: int = 1000) -> data.Dataset:
  """What prediction needs of a dataset (style, statistics, class names), without reading it where that is known:
  ImageNet's names ship with cnnjax, so an ImageNet network predicts without ImageNet prepared."""
  if name == IMAGENET:  # (num_classes: of a network with torchvision's layout, whose weights may have others)
    return data.Dataset(
      name,
      train=(),
      test=(),
      num_classes=num_classes,
      spec=sources.TFDS[name],
      class_names=tuple(sources.imagenet_classes().values()),
    )
  return data.load(name, data_dir)


def read_image(path: str) -> np.ndarray:
  """The image at `path` as uint8 HWC (RGB, or one channel for greyscale files); ValueError in words."""
  try:
    with Image.open(path) as image:
      image = image.convert("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
      array = np.asarray(image)
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: not a readable image ({str(e).splitlines()[0]})") from None
  return array[..., None] if array.ndim == 2 else array


def format_table(path: str, top: list[dict]) -> str:
  rows = "\n".join(f"  {100 * t['probability']:6.2f}%  {t['label']} ({t['index']})" for t in top)
  return f"{path}\n{rows}"


def main(argv):
  images = argv[1:]
  if not images:
    raise app.UsageError("give one or more images: python -m cnnjax.predict --workdir=W IMAGE...")
  if bool(FLAGS.workdir) == bool(FLAGS.model or FLAGS.weights) or bool(FLAGS.model) != bool(FLAGS.weights):
    raise app.UsageError("give either --workdir=W or both --model=NAME and --weights=FILE")
  cli.start()
  predictor = (
    Predictor.from_workdir(FLAGS.workdir) if FLAGS.workdir else Predictor.from_torchvision(FLAGS.model, FLAGS.weights)
  )
  failed = 0
  for path in images:
    try:
      top = predictor.top(read_image(path), FLAGS.top)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      failed += 1
      continue
    print(json.dumps({"image": path, "top": top}) if FLAGS.format == "json" else format_table(path, top), flush=True)
  if failed:
    print(f"error: {failed} of {len(images)} image(s) could not be read", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A cnnjax workdir (trained, or written by cnnjax.convert).")
  flags.DEFINE_enum(
    "model", None, list(pretrained.TORCHVISION), "With --weights: a network with torchvision's weights."
  )
  flags.DEFINE_string(
    "weights", None, "torchvision's weight file for --model: .pth (the [torch] extra) or .safetensors."
  )
  flags.DEFINE_enum("format", "table", ["table", "json"], "table, or json: one object per image and line.")
  flags.DEFINE_integer("top", 5, "How many classes per image.", lower_bound=1)
  cli.run(main)
