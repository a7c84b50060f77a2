"""The papers' test protocols: AlexNet's ten crops (section 4.1), GoogLeNet's 144 (section 7), the training colour
shift and scale jitter; and the evaluation that averages a protocol's views."""

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax import evaluation, models, train
from cnnjax.data import pipeline, recipes, transforms

from helpers import load_config, run


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth image with detail everywhere (no two crops alike), uint8 RGB."""
  y, x = np.mgrid[0:height, 0:width]
  rng = np.random.default_rng(seed)
  waves = [np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40) + rng.uniform(0, 6)) for _ in range(3)]
  noise = rng.integers(0, 40, (height, width, 3))
  return (np.stack(waves, -1) * 100 + 110 + noise).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(300, 400), (500, 333), (256, 256)])
def test_ten_crop_is_torchvisions_resize_and_ten_crop(shape):
  tv = pytest.importorskip("torchvision.transforms", reason="compares with torchvision: pip install -e '.[torch]'")
  image = photo(*shape)
  theirs = tv.Compose([tv.Resize(256), tv.TenCrop(224)])(Image.fromarray(image))
  ours = transforms.ten_crop(image)
  assert ours.shape == (10, 224, 224, 3) and ours.dtype == np.uint8
  for i, crop in enumerate(theirs):
    np.testing.assert_array_equal(ours[i], np.asarray(crop), err_msg=f"crop {i}")


def test_ten_crop_takes_the_corners_the_centre_and_their_mirrors_by_hand():
  image = photo(256, 320)  # already 256 on the shorter side: no resize
  crops = transforms.ten_crop(image)
  corners = [image[:224, :224], image[:224, 96:], image[32:, :224], image[32:, 96:], image[16:240, 48:272]]
  mirrored = image[:, ::-1]
  mirrors = [
    mirrored[:224, :224],
    mirrored[:224, 96:],
    mirrored[32:, :224],
    mirrored[32:, 96:],
    mirrored[16:240, 48:272],
  ]
  for i, expected in enumerate(corners + mirrors):
    np.testing.assert_array_equal(crops[i], expected, err_msg=f"crop {i}")


@pytest.mark.parametrize(
  "height,width,offsets",
  [
    # landscape 400x600: at shorter side S the long side is 1.5 S; squares at 0, (1.5 S - S) / 2 and 1.5 S - S
    (400, 600, {256: (0, 64, 128), 288: (0, 72, 144), 320: (0, 80, 160), 352: (0, 88, 176)}),
    # portrait 500x375: the long side is int(S x 4/3): 341, 384, 426, 469
    (500, 375, {256: (0, 42, 85), 288: (0, 48, 96), 320: (0, 53, 106), 352: (0, 58, 117)}),
  ],
)
def test_googlenet_boxes_by_hand(height, width, offsets):
  boxes = transforms.googlenet_boxes(height, width)
  assert len(boxes) == 4 * 3 * 6  # x 2 mirrors = 144
  for scale, squares in offsets.items():
    ours = [b for b in boxes if b[0] == scale]
    margin = scale - 224
    crops = [(0, 0), (0, margin), (margin, 0), (margin, margin), (margin // 2, margin // 2), None]
    at = [(0, o) if width > height else (o, 0) for o in squares]
    assert ours == [(scale, square, crop) for square in at for crop in crops]


@pytest.mark.parametrize("shape", [(400, 600), (500, 375)])
def test_googlenet_crops_are_144_distinct_crops_and_their_mirrors(shape):
  image = photo(*shape, seed=1)
  crops = transforms.googlenet_crops(image)
  assert crops.shape == (144, 224, 224, 3) and crops.dtype == np.uint8
  assert len({c.tobytes() for c in crops}) == 144
  grouped = crops.reshape(12, 12, 224, 224, 3)  # per scale and square: six crops, then their six mirrors
  np.testing.assert_array_equal(grouped[:, 6:], grouped[:, :6, :, ::-1])
  # the first square at the first scale, by hand: its top-left crop, and the square resized
  resized = transforms.resize_shorter(image, 256)
  np.testing.assert_array_equal(crops[0], resized[:224, :224])
  np.testing.assert_array_equal(crops[5], transforms.resize(resized[:256, :256], 224, 224))


def test_lighting_shift_has_the_papers_mean_and_covariance():
  """Over many draws the added colour has mean 0 and covariance V diag(std^2 lambda^2) V^T (x 255^2)."""
  rng = np.random.default_rng(0)
  shifts = np.stack([transforms.lighting_shift(rng) for _ in range(40_000)])
  vectors, values = transforms.PCA_EIGENVECTORS, transforms.PCA_EIGENVALUES
  expected = 255**2 * vectors @ np.diag(0.01 * values**2) @ vectors.T
  np.testing.assert_allclose(shifts.mean(0), 0, atol=0.05)  # the mean's standard error: 5.5 / 200 on the first axis
  np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.02 * expected.max())
  # along each eigenvector the variance is its own, (0.1 x 255 x lambda_i)^2: 30.8, 0.23, 0.013
  np.testing.assert_allclose(np.var(shifts @ vectors, 0), (25.5 * values) ** 2, rtol=0.03)


def test_lighting_adds_one_shift_to_every_pixel_and_is_deterministic():
  image = np.full((4, 5, 3), 100, np.uint8)
  image[0, 0] = (0, 255, 7)
  shift = transforms.lighting_shift(np.random.default_rng(3))
  out = transforms.lighting(image, np.random.default_rng(3))
  np.testing.assert_array_equal(out[1:], np.broadcast_to(np.round(100 + shift), (3, 5, 3)))
  np.testing.assert_array_equal(out[0, 0], np.clip(np.round(np.array([0, 255, 7]) + shift), 0, 255))
  np.testing.assert_array_equal(out, transforms.lighting(image, np.random.default_rng(3)))


def test_scale_jitter_spreads_the_shorter_side_uniformly_and_crops_inside_the_resized_image():
  rng = np.random.default_rng(0)
  windows = [transforms.scale_crop_window(60, 90, rng, 24, shorter=(32, 48)) for _ in range(3400)]
  counts = np.bincount([s for s, *_ in windows], minlength=49)[32:]
  assert len(counts) == 17 and counts.min() > 0.75 * 200 and counts.max() < 1.25 * 200  # 200 each expected
  for scale, top, left, _ in windows:  # (the longer side is int(1.5 S))
    assert 0 <= top <= scale - 24 and 0 <= left <= int(1.5 * scale) - 24
  assert {flip for *_, flip in windows} == {True, False}
  image = photo(60, 90)
  scale, top, left, flip = transforms.scale_crop_window(60, 90, np.random.default_rng(5), 24, shorter=(32, 48))
  crop = transforms.random_scale_crop(image, np.random.default_rng(5), 24, shorter=(32, 48))
  expected = transforms.resize_shorter(image, scale)[top : top + 24, left : left + 24]
  # (only the window is resized: within one level of resizing the whole image, PIL's rounding of its box)
  np.testing.assert_allclose(crop, expected[:, ::-1] if flip else expected, atol=1)


@pytest.mark.parametrize("protocol", ["center", "ten_crop", "googlenet144"])
def test_each_protocol_scores_every_test_image_by_its_views_mean_softmax(small_tfds, protocol):
  """The whole evaluation (pipeline, padded batches over 8 devices, the pmapped step) against the mean softmax over
  each image's views computed here one image at a time, on the ImageNet-format test set the suite builds, at 32x32
  (GoogLeNet's scales in proportion: 37 to 50)."""
  config = load_config("resnet", "18", dataset="imagenet2012", data_dir=small_tfds, image_size=32, batch_size=8)
  config.model_options.update(stage_sizes=(1, 1, 1, 1), widths=(8, 8, 8, 8))  # thin: 864 views stay cheap
  config.eval_protocol = protocol
  run = train.build(config)
  state = train.initial_state(run)
  result = evaluation.evaluate_state(train.pmapped_steps(run.step_config)[1], state, run)
  model, variables = (
    models.unsynchronised(run.step_config.model),
    {"params": state.params, "batch_stats": state.batch_stats},
  )
  apply = jax.jit(lambda x: model.apply(variables, x, train=False)[0])
  losses, hits = [], []
  for example in run.dataset.test:
    if protocol == "center":
      views = pipeline.fit_example(example, (32, 32, 3), style="imagenet")[None]
    else:
      views = recipes.eval_views(example["image"], (32, 32, 3), "imagenet", protocol)
    assert len(views) == {"center": 1, "ten_crop": 10, "googlenet144": 144}[protocol]
    logits = np.asarray(apply(transforms.normalize(views, *run.dataset.normalization(3))), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities = (exp / exp.sum(-1, keepdims=True)).mean(0)
    losses.append(-np.log(probabilities[example["label"]]))
    hits.append(probabilities.argmax() == example["label"])
  assert result["eval_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
  assert result["eval_accuracy"] == pytest.approx(np.mean(hits))


def test_a_protocol_the_images_do_not_allow_is_refused_in_one_line(tmp_path):
  result = run("--config=configs/lenet5.py:local", f"--workdir={tmp_path}", "--config.eval_protocol=ten_crop")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip().splitlines()[-1].startswith("error: eval_protocol 'ten_crop' needs ImageNet-style photos")
  )


def test_cifar_images_take_their_ten_crops_from_the_4_pixel_padding_by_hand():
  image = photo(32, 32)
  padded = np.zeros((40, 40, 3), np.uint8)
  padded[4:36, 4:36] = image
  views = recipes.eval_views(image, (32, 32, 3), "cifar", "ten_crop")
  corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]  # the centre crop is the image itself
  expected = [view[y : y + 32, x : x + 32] for view in (padded, padded[:, ::-1]) for y, x in corners]
  np.testing.assert_array_equal(views, np.stack(expected))
  np.testing.assert_array_equal(views[4], image)
