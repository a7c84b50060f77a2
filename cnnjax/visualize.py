"""What a trained network looks like inside: its first layer's kernels, and its feature maps for one image.

    python -m cnnjax.visualize filters --workdir=W [--out=filters.png]
    python -m cnnjax.visualize filters --model=alexnet_torchvision --weights=alexnet-owt-7be5be79.pth
    python -m cnnjax.visualize activations --workdir=W IMAGE [--out=activations.png]

`filters`: every kernel of the first convolution as a tile (the AlexNet paper's Fig. 3 shows its 96 kernels of
11x11x3 this way), RGB for a 3-channel input and grey for one channel, each kernel scaled to its own range so its
pattern shows whatever its magnitude. `activations`: the image as the network sees it (after the evaluation
preprocessing), then the first channels of each stage's output (the model's `intermediates`), each map scaled to
its own range. Both read any workdir cnnjax trained or converted, or torchvision's weights.
"""

import math

import numpy as np
from absl import app, flags

from cnnjax import cli, gradflow, metrics
from cnnjax.predict import Predictor, read_image

FLAGS = flags.FLAGS
COMMANDS = ("filters", "activations")


def first_kernel(predictor: Predictor) -> tuple[str, np.ndarray]:
  """(name, kernel [kh, kw, in, out]) of the convolution the input meets first."""
  variables = predictor.variables
  x = np.zeros((1, *predictor.input_shape), np.float32)
  layers = gradflow.weighted_layers(variables["params"])
  first = next(layers[i] for i in gradflow.forward_order(predictor.model, variables, x) if np.ndim(layers[i][2]) == 4)
  return first[1].removesuffix("/conv"), np.asarray(first[2], np.float32)  # conv1/conv: the unit conv1's convolution


def _scaled(tile: np.ndarray) -> np.ndarray:
  """`tile` scaled to 0..1 by its own minimum and maximum (a constant tile becomes mid-grey)."""
  low, high = tile.min(), tile.max()
  return (tile - low) / (high - low) if high > low else np.full_like(tile, 0.5)


def mosaic(tiles: np.ndarray, columns: int) -> np.ndarray:
  """[n, h, w, c] tiles (0..1) on a grid of `columns`, one white pixel between them."""
  n, h, w, c = tiles.shape
  rows = math.ceil(n / columns)
  out = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), np.float32)
  for i, tile in enumerate(tiles):
    r, col = divmod(i, columns)
    out[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = tile
  return out


def draw_filters(predictor: Predictor, title: str, out: str) -> str:
  name, kernel = first_kernel(predictor)
  kh, kw, cin, count = kernel.shape
  tiles = np.moveaxis(kernel, -1, 0)  # [out, kh, kw, in]
  if cin != 3:  # grey: one channel, or the mean over the input channels of a kernel that is not RGB
    tiles = tiles.mean(axis=-1, keepdims=True)
  tiles = np.stack([_scaled(t) for t in tiles])
  columns = min(count, 16 if count > 32 else 8)
  grid = mosaic(tiles, columns)
  rows = math.ceil(count / columns)
  with metrics.figure(out, figsize=(max(6.5, 0.55 * columns + 0.4), 0.55 * rows + 0.9)) as ax:
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{title}\nthe {count} kernels of {name} ({kh}x{kw}x{cin}), each scaled to its own range", fontsize=9)
  return name


def stage_maps(predictor: Predictor, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(name, [h, w, channels]) of every stage output that is a map, in forward order, for one image."""
  fitted, x = predictor.model_input(image)
  _, out = predictor.model.apply(predictor.variables, x, train=False)  # not jitted: a jitted dict comes back sorted
  return fitted, [(k, np.asarray(v[0], np.float32)) for k, v in out.items() if np.ndim(v) == 4]


def draw_activations(predictor: Predictor, image: np.ndarray, title: str, out: str, channels: int = 8) -> list[str]:
  fitted, maps = stage_maps(predictor, image)
  rows = len(maps) + 1
  with metrics.figure(out, rows, channels, figsize=(1.3 * channels, 1.35 * rows), squeeze=False) as axes:
    for ax in axes.ravel():
      ax.set_axis_off()
    shown = fitted.squeeze(-1) if fitted.shape[-1] == 1 else fitted
    axes[0, 0].imshow(shown, cmap="gray", interpolation="nearest")
    axes[0, 0].set_title(f"input {fitted.shape[0]}x{fitted.shape[1]}", fontsize=8)
    # the title runs across the empty cells of the first row; left out of the layout, so its length cannot shrink
    # the tiles
    axes[0, 1].text(0, 0.5, title, fontsize=9, va="center", in_layout=False)
    for row, (name, fmap) in enumerate(maps, start=1):
      for c in range(min(channels, fmap.shape[-1])):
        axes[row, c].imshow(_scaled(fmap[..., c]), cmap="viridis", interpolation="nearest", vmin=0, vmax=1)
      axes[row, 0].set_title(f"{name}: {fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}", fontsize=8, loc="left")
  return [name for name, _ in maps]


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(
      f"write: python -m cnnjax.visualize {{{'|'.join(COMMANDS)}}} (--workdir=W | --model=NAME --weights=FILE)"
    )
  command, images = argv[1], argv[2:]
  if command == "activations" and len(images) != 1:
    raise app.UsageError("activations takes one image: python -m cnnjax.visualize activations --workdir=W IMAGE")
  if command == "filters" and images:
    raise app.UsageError(f"filters takes no image: {' '.join(images)}")
  if bool(FLAGS.workdir) == bool(FLAGS.model or FLAGS.weights) or bool(FLAGS.model) != bool(FLAGS.weights):
    raise app.UsageError("give either --workdir=W or both --model=NAME and --weights=FILE")
  cli.start()
  predictor = (
    Predictor.from_workdir(FLAGS.workdir) if FLAGS.workdir else Predictor.from_torchvision(FLAGS.model, FLAGS.weights)
  )
  title = f"{predictor.config_name}"
  out = FLAGS.out or f"{command}.png"
  if command == "filters":
    layer = draw_filters(predictor, title, out)
    print(f"wrote {out}: the kernels of {layer}")
  else:
    stages = draw_activations(predictor, read_image(images[0]), title=title, out=out)
    print(f"wrote {out}: {images[0]} through {', '.join(stages)}")


if __name__ == "__main__":
  from cnnjax.models import pretrained

  flags.DEFINE_string("workdir", None, "A cnnjax workdir (trained, or written by cnnjax.convert).")
  flags.DEFINE_enum(
    "model", None, list(pretrained.TORCHVISION), "With --weights: a network with torchvision's weights."
  )
  flags.DEFINE_string("weights", None, "torchvision's weight file for --model.")
  flags.DEFINE_string("out", None, "The picture to write (.png, .svg, .pdf); default filters.png or activations.png.")
  cli.run(main)
