"""cnnjax.visualize: which kernels and maps it shows (the data), and that the commands write their pictures."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax import config as config_lib
from cnnjax import data, models, train
from cnnjax.data.sources import TFDS
from cnnjax.predict import Predictor
from cnnjax.visualize import first_kernel, mosaic, stage_maps

from helpers import ROOT


@pytest.fixture(scope="module")
def lenet_workdir(tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lenet")
  config = config_lib.load("lenet5")
  config.update(data_dir=tfds_dir, num_epochs=0, num_steps=2, eval_every_steps=2, log_every_steps=1)
  train.train_and_evaluate(config, str(workdir))
  return workdir


def test_the_first_kernels_are_the_layer_the_input_meets_first(lenet_workdir):
  predictor = Predictor.from_workdir(str(lenet_workdir))
  name, kernel = first_kernel(predictor)
  assert (name, kernel.shape) == ("C1", (5, 5, 1, 6))  # LeNet-5's C1: six 5x5 feature maps (paper, section II.B)
  assert np.array_equal(kernel, np.asarray(predictor.variables["params"]["C1"]["kernel"]))
  # AlexNet's paper layout: 96 kernels of 11x11x3 (its Fig. 3), the unit conv1's convolution
  model = models.create("alexnet")
  alexnet = Predictor(
    "alexnet",
    model,
    train.init_variables(jax.random.key(0), model, (227, 227, 3)),
    (227, 227, 3),
    data.Dataset("imagenet2012", (), (), 1000, TFDS["imagenet2012"]),
  )
  name, kernel = first_kernel(alexnet)
  assert (name, kernel.shape) == ("conv1", (11, 11, 3, 96))


def test_the_stages_come_in_forward_order_with_their_shapes(lenet_workdir, tfds_dir):
  predictor = Predictor.from_workdir(str(lenet_workdir))
  fitted, maps = stage_maps(predictor, data.load("digits", tfds_dir).test[0]["image"])
  # LeNet-5's Table/Fig. 2 sizes: C1 28x28x6, S2 14x14x6, C3 10x10x16, S4 5x5x16 (C5 is 1x1: a vector here)
  assert [(name, m.shape) for name, m in maps] == [
    ("C1", (28, 28, 6)),
    ("S2", (14, 14, 6)),
    ("C3", (10, 10, 16)),
    ("S4", (5, 5, 16)),
  ]
  assert fitted.shape == (32, 32, 1) and fitted.dtype == np.uint8


def test_a_mosaic_puts_each_tile_in_its_place_with_a_gap():
  tiles = np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 2, 3, 1), np.float32)
  grid = mosaic(tiles, columns=2)
  assert grid.shape == (3 * 3 - 1, 2 * 4 - 1, 1)  # 3 rows of 2-high tiles, 2 columns of 3-wide, 1-pixel gaps
  assert (
    grid[0, 0, 0] == 0 and grid[0, 4, 0] == 1 and grid[3, 0, 0] == 2 and grid[6, 4, 0] == 1
  )  # the empty slot: white
  assert grid[2, 0, 0] == 1 and grid[0, 3, 0] == 1  # gaps


def test_the_commands_write_their_pictures(lenet_workdir, tmp_path):
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)).save(tmp_path / "digit.png")
  for command, args in (("filters", []), ("activations", [tmp_path / "digit.png"])):
    out = tmp_path / f"{command}.png"
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "cnnjax.visualize",
        command,
        f"--workdir={lenet_workdir}",
        f"--out={out}",
        *map(str, args),
      ],
      capture_output=True,
      text=True,
      cwd=ROOT,
      check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
  assert "through C1, S2, C3, S4" in result.stdout
  wrong = subprocess.run(
    [sys.executable, "-m", "cnnjax.visualize", "activations", f"--workdir={lenet_workdir}"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  assert wrong.returncode == 1 and "activations takes one image" in wrong.stderr


@pytest.mark.parametrize("family", ["lenet5", "resnet18"])
def test_the_activation_tiles_are_as_large_with_a_long_title_as_with_a_short_one(family, drawn, tmp_path):
  """A workdir's title ("resnet18 on imagenet2012") once squeezed every tile to a third of its size."""
  from cnnjax import visualize

  model = models.create(family, num_classes=10)
  shape = models.input_shape(family)
  variables = train.init_variables(jax.random.key(0), model, shape)
  predictor = Predictor(family, model, variables, shape, data.load("fake:32x32x3:10"))
  image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
  widths = []
  for title in ("x", f"{family} on imagenet2012, a title as long as a workdir's can be"):
    visualize.draw_activations(predictor, image, title=title, out=str(tmp_path / "a.png"))
    tile = drawn[-1][1, 0].get_window_extent()  # the first stage's first channel, in pixels
    widths.append(tile.width)
  assert widths[1] == pytest.approx(widths[0], rel=0.02) and widths[0] > 90  # 1.3 in per tile at 100 dpi
