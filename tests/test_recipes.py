"""Each paper's training recipe (cnnjax/data/recipes.py) against its paper's description: AlexNet's crops of the
central 256 square (section 4.1), VGG's and ResNet's scale ranges (3.1; 3.4), GoogLeNet's interpolations (6), the
colour jitter by hand; the recipes a dataset refuses; the meaning of workdirs made before recipes had names."""

import json

import numpy as np
import pytest

from cnnjax import config as config_lib
from cnnjax import train
from cnnjax.data import recipes, transforms

from helpers import load_config, photo


def test_alexnet_takes_a_224_patch_of_the_central_256_square_mirrors_it_and_shifts_its_colour():
  image = photo(256, 320)  # the shorter side already 256: the central square is columns 32..287
  for seed in range(6):
    draws = np.random.default_rng(seed)
    y, x = draws.integers(0, 256 - 224 + 1, 2)  # the patch's offset inside the square
    patch = image[y : y + 224, 32 + x : 32 + x + 224]
    patch = patch[:, ::-1] if draws.random() < 0.5 else patch
    expected = np.clip(np.round(patch + transforms.lighting_shift(draws).astype(np.float32)), 0, 255)
    np.testing.assert_array_equal(recipes.alexnet(image, np.random.default_rng(seed), 224), expected)


@pytest.mark.parametrize("recipe,shorter", [("vgg", (256, 512)), ("resnet", (256, 480))])
def test_vgg_and_resnet_jitter_the_scale_over_their_papers_range_then_shift_the_colour(recipe, shorter):
  image = photo(300, 400)
  for seed in range(3):
    draws = np.random.default_rng(seed)
    expected = transforms.lighting(transforms.random_scale_crop(image, draws, 224, shorter=shorter), draws)
    np.testing.assert_array_equal(recipes.TRAINING[recipe](image, np.random.default_rng(seed), 224), expected)
  # at another input size the range scales with it: 256..512 at 224 is 37..73 at 32
  draws = np.random.default_rng(0)
  small = transforms.lighting(
    transforms.random_scale_crop(image, draws, 32, shorter=(37, round(shorter[1] / 7))), draws
  )
  np.testing.assert_array_equal(recipes.TRAINING[recipe](image, np.random.default_rng(0), 32), small)


def test_inception_draws_its_interpolation_among_four_then_jitters_the_colour():
  image, methods = photo(120, 160), set()
  for seed in range(12):
    draws = np.random.default_rng(seed)
    method = str(draws.choice(["bilinear", "area", "nearest", "cubic"]))
    methods.add(method)
    expected = transforms.color_jitter(transforms.random_resized_crop(image, draws, 64, method=method), draws)
    np.testing.assert_array_equal(recipes.inception(image, np.random.default_rng(seed), 64), expected)
  assert methods == {"bilinear", "area", "nearest", "cubic"}


class Draws:
  """A generator whose draws are chosen: the three factors, then the order."""

  def __init__(self, factors, order):
    self.factors, self.order = np.array(factors), np.array(order)

  def uniform(self, low, high, n):
    assert (low, high, n) == pytest.approx((0.6, 1.4, 3))
    return self.factors

  def permutation(self, n):
    return self.order


def test_color_jitter_by_hand():
  grey = np.full((2, 2, 3), 50, np.uint8)
  grey[0] = 150  # mean grey level 100
  # brightness x1.2: 60 and 180; contrast x0.5 towards their mean 120: 90 and 150; saturation leaves grey as it is
  out = transforms.color_jitter(grey, Draws([1.2, 0.5, 1.3], [0, 1, 2]))
  np.testing.assert_array_equal(out[0], np.full((2, 3), 150))
  np.testing.assert_array_equal(out[1], np.full((2, 3), 90))
  # saturation x0.5 alone: (200, 100, 0) has luma 0.299 x 200 + 0.587 x 100 = 118.5, halfway there
  colour = np.array([[[200, 100, 0]]], np.uint8)
  np.testing.assert_array_equal(transforms.color_jitter(colour, Draws([1, 1, 0.5], [2, 0, 1]))[0, 0], [159, 109, 59])
  # contrast first, then brightness: x2 around the mean of 50 and 150 gives 0 and 200, then x1.5 clips 300 to 255
  np.testing.assert_array_equal(transforms.color_jitter(grey, Draws([1.5, 2, 1], [1, 0, 2]))[:, 0, 0], [255, 0])


def test_the_box_resize_is_the_whole_resize_within_one_level():
  image = photo(375, 500)
  for shorter, top, left in ((256, 0, 0), (300, 40, 77), (480, 256, 416)):
    shape = transforms.shorter_side_shape(375, 500, shorter)
    whole = transforms.resize(image, *shape)[top : top + 224, left : left + 224]
    window = transforms.window_of_resized(image, shape, top, left, 224)
    assert np.abs(window.astype(int) - whole).max() <= 1


@pytest.mark.parametrize(
  "config,recipe,refusal",
  [
    (
      "cifar_resnet",
      "alexnet",
      "augment 'alexnet' is for ImageNet-style photos; CIFAR-style images take cifar or none",
    ),
    ("resnet", "cifar", "augment 'cifar' pads CIFAR-sized images; ImageNet-style photos take alexnet, vgg"),
  ],
)
def test_a_recipe_the_images_do_not_take_is_refused_in_one_line(config, recipe, refusal):
  with pytest.raises(ValueError, match=refusal):
    train.build(load_config(config, augment=recipe))


@pytest.mark.parametrize(
  "name,augment,recipe",
  [("googlenet", True, "inception"), ("cifar_resnet", True, "cifar"), ("lenet5", True, "none"), ("vgg", False, "none")],
)
def test_a_workdir_made_before_recipes_had_names_keeps_its_meaning(tmp_path, name, augment, recipe):
  written = json.loads(config_lib.load(name).to_json_best_effort()) | {"augment": augment}
  (tmp_path / "config.json").write_text(json.dumps(written))
  assert config_lib.from_workdir(str(tmp_path)).augment == recipe
