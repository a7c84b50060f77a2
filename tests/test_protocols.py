"""The papers' test protocols: AlexNet's ten crops (section 4.1), GoogLeNet's 144 (section 7), the training colour
shift and scale jitter; and the evaluation that averages a protocol's views."""

import functools
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnjax import evaluation, models, train
from cnnjax.data import pipeline, recipes, transforms
from cnnjax.models import dense

from helpers import initial_workdir, load_config, photo, thin_resnet
from helpers import run as run_command


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


def one_at_a_time(run, state) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities, labels) of the test split, each image's views made and scored here one image at a time: the
  softmax averaged over its crops; for 'dense', over each scale's whole image and its mirror, each scored by the mean
  of its class-score map."""
  config, shape = run.config, (run.config.image_size, run.config.image_size, run.config.channels)
  model = models.unsynchronised(run.step_config.model)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  dense_form = config.eval_protocol == "dense"
  scores = jax.jit(lambda x: dense.dense_logits(model, variables, x) if dense_form else model.apply(variables, x)[0])
  normalize = functools.partial(transforms.normalize, mean=run.step_config.mean, std=run.step_config.std)
  probabilities, labels = [], []
  for example in run.dataset.test:
    if config.eval_protocol == "center":
      views = [pipeline.fit_example(example, shape, style="imagenet")[None]]
    elif dense_form:
      views = [np.stack([v, v[:, ::-1]]) for v in recipes.dense_views(example["image"], shape, config.eval_scales)]
    else:
      views = [recipes.eval_views(example["image"], shape, "imagenet", config.eval_protocol)]
    logits = np.concatenate([np.asarray(scores(normalize(v)), np.float64) for v in views])
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities.append((exp / exp.sum(-1, keepdims=True)).mean(0))
    labels.append(example["label"])
  return np.array(probabilities), np.array(labels)


@pytest.mark.parametrize(
  "name,fields",
  [
    ("resnet", {"eval_protocol": "center"}),
    ("resnet", {"eval_protocol": "ten_crop"}),
    ("resnet", {"eval_protocol": "googlenet144"}),
    ("resnet", {"eval_protocol": "dense", "eval_scales": (224, 256)}),  # 32 and 37 at this input
    ("vgg", {"eval_protocol": "dense", "eval_scales": (224, 320), "image_size": 224}),  # fc6 as a 7x7 convolution
  ],
)
def test_each_protocol_scores_every_test_image_by_its_views_mean_softmax(small_tfds, name, fields):
  """The whole evaluation (pipeline, padded batches over 8 devices, the pmapped step; for 'dense' the views grouped
  by shape and scored in steps of several) against the mean softmax over each image's views computed here one image at
  a time, on the ImageNet-format test set the suite builds (photos of 230 to 300 pixels), at 32x32 (GoogLeNet's
  scales in proportion: 37 to 50) or for VGG at 224."""
  config = thin_resnet(small_tfds, **fields)
  if name == "vgg":
    config = load_config("vgg", "11", dataset="imagenet2012", data_dir=small_tfds, batch_size=8, **fields)
    config.model_options.update(widths=(4, 4, 8, 8, 8), fc_width=16)
  run = train.build(config)
  state = train.initial_state(run)
  result = evaluation.evaluate_state(train.pmapped_steps(run.step_config)[1], state, run)
  probabilities, labels = one_at_a_time(run, state)
  assert result["eval_loss"] == pytest.approx(np.mean(-np.log(probabilities[np.arange(6), labels])), rel=1e-4)
  assert result["eval_accuracy"] == pytest.approx(np.mean(probabilities.argmax(-1) == labels))


@pytest.mark.parametrize("protocol", ["dense", "googlenet144"])
def test_an_ensemble_of_two_workdirs_averages_their_softmax_through_the_command(small_tfds, tmp_path, protocol):
  """`--mode=eval --workdir=W1,W2` (each member under the protocol its config.json names) against the two networks'
  probabilities, each computed one image at a time, averaged; the line kept in the first workdir."""
  members = []
  for seed in (0, 1):
    config = thin_resnet(small_tfds, seed=seed, eval_protocol=protocol, eval_scales=(224, 256))
    members.append(one_at_a_time(*initial_workdir(config, tmp_path / f"w{seed}")))
  workdirs = f"{tmp_path / 'w0'},{tmp_path / 'w1'}"
  evaluated = run_command("--mode=eval", f"--workdir={workdirs}")
  assert evaluated.returncode == 0, evaluated.stderr
  result = dict(zip(*[iter(evaluated.stdout.splitlines()[-1].split())] * 2))
  (first, labels), (second, _) = members
  mean = (first + second) / 2
  assert (result["models"], result["steps"], result["protocol"]) == ("2", "0,0", protocol)
  assert float(result["eval_loss"]) == pytest.approx(np.mean(-np.log(mean[np.arange(6), labels])), abs=1e-4)
  assert float(result["eval_accuracy"]) == pytest.approx(np.mean(mean.argmax(-1) == labels))
  assert float(result["top5_error"].rstrip("%")) == pytest.approx(100 * (1 - float(result["eval_top5"])), abs=0.01)
  recorded = json.loads((tmp_path / "w0" / "evaluations.jsonl").read_text())  # kept in the first workdir
  assert recorded["workdirs"] == workdirs.split(",") and recorded.get("eval_scales") == (
    [224, 256] if protocol == "dense" else None
  )
  assert recorded["eval_loss"] == pytest.approx(float(result["eval_loss"]), abs=1e-4)
  # the members differ (else the average would prove nothing)
  assert np.abs(first - second).max() > 1e-3


def test_a_protocol_the_images_do_not_allow_is_refused_in_one_line(tmp_path):
  result = run_command("--config=configs/lenet5.py:local", f"--workdir={tmp_path}", "--config.eval_protocol=ten_crop")
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


def thin_model(name: str, size: int, **options):
  model = models.unsynchronised(models.create(name, 10, **options))
  return model, train.init_variables(jax.random.key(0), model, (size, size, 3))


THIN_VGG = {"block_sizes": (1, 1, 1, 1, 1), "widths": (4, 4, 8, 8, 8), "fc_width": 16}


@pytest.mark.parametrize(
  "name,size,options",
  [("vgg11", 224, THIN_VGG), ("alexnet_torchvision", 224, {"fc_width": 16}), ("alexnet", 227, {"fc_width": 16})],
)
def test_fc_layers_as_convolutions_give_the_standard_logits_at_the_training_size(name, size, options):
  model, variables = thin_model(name, size, **options)
  images = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  logits, _ = model.apply(variables, images)
  scores = dense.score_map(model, variables, images)
  assert scores.shape == (2, 1, 1, 10)  # one 7x7 (6x6) window: the whole map fc6 reads
  np.testing.assert_allclose(scores[:, 0, 0], logits, rtol=1e-5, atol=1e-6)


@settings(max_examples=4, deadline=None)
@given(st.integers(224, 330), st.integers(224, 330))
def test_each_score_of_the_map_is_the_classifier_on_its_window_of_the_last_conv_map(height, width):
  """VGG section 3.2 on a larger image: one score vector per 7x7 window of the last (stride 32) map, each what fc6
  (a flattened 7x7x512 window), fc7 and fc8 give that window; their mean is the image's dense logits."""
  model, variables = thin_model("vgg11", 224, **THIN_VGG)
  images = jax.random.normal(jax.random.key(2), (1, height, width, 3))
  scores = np.asarray(dense.score_map(model, variables, images), np.float64)
  assert scores.shape == (1, height // 32 - 6, width // 32 - 6, 10)
  features = np.asarray(model.apply(variables, images)[1]["block5"], np.float64)[0]
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
  relu = lambda v: np.maximum(v, 0)
  for i in range(scores.shape[1]):
    for j in range(scores.shape[2]):
      window = features[i : i + 7, j : j + 7].reshape(-1)  # flattened as the standard forward flattens
      fc7 = relu(relu(window @ p["fc6"]["kernel"] + p["fc6"]["bias"]) @ p["fc7"]["kernel"] + p["fc7"]["bias"])
      np.testing.assert_allclose(scores[0, i, j], fc7 @ p["fc8"]["kernel"] + p["fc8"]["bias"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dense.dense_logits(model, variables, images)[0], scores[0].mean((0, 1)), rtol=1e-5)


def test_dense_views_keep_the_whole_image_cut_to_the_stride_and_group_into_few_shapes():
  image = photo(375, 500)
  views = recipes.dense_views(image, (224, 224, 3), (256, 384, 512))
  # shorter side Q; the longer int(Q x 4/3) = 341, 512, 682 cut, centred, to 320, 512, 672
  assert [v.shape for v in views] == [(256, 320, 3), (384, 512, 3), (512, 672, 3)]
  np.testing.assert_array_equal(views[0], transforms.resize_shorter(image, 256)[:, 10:330])
  assert recipes.dense_views(photo(500, 375), (224, 224, 3), (256,))[0].shape == (320, 256, 3)  # portrait


@pytest.mark.parametrize(
  "config,fields,refusal",
  [
    ("lenet5", {"eval_protocol": "dense"}, "eval_protocol 'dense' needs ImageNet-style photos"),
    ("vgg", {"eval_protocol": "dense", "image_size": 64}, "needs image_size 224 or more: fc6 reads a 7x7 map"),
    ("vgg", {"eval_protocol": "dense", "eval_scales": (128,)}, "must list shorter sides of at least 224"),
  ],
)
def test_a_dense_evaluation_that_cannot_run_is_refused_before_training(config, fields, refusal, small_tfds):
  with pytest.raises(ValueError, match=refusal):
    train.build(load_config(config, data_dir=small_tfds, **fields))


def test_a_confidently_wrong_network_has_a_finite_loss_under_every_protocol(small_tfds):
  """Logits of +-1e4: the true class's probability underflows in any float, so the views' and the members' mean
  probabilities are taken in log space (a loss of inf told nothing)."""
  losses = {}
  for protocol in ("center", "dense"):
    run = train.build(thin_resnet(small_tfds, eval_protocol=protocol, eval_scales=(224,)))
    state = train.initial_state(run)
    fc = state.params["fc"]
    state = state.replace(params={**state.params, "fc": {**fc, "kernel": fc["kernel"] * 1e5}})
    losses[protocol] = evaluation.evaluate_state(train.pmapped_steps(run.step_config)[1], state, run)["eval_loss"]
    losses[f"{protocol} ensemble"] = evaluation.ensemble([(run, state), (run, state)])["eval_loss"]
  assert all(100 < loss < np.inf for loss in losses.values()), losses
  assert losses["center"] == pytest.approx(losses["center ensemble"], rel=1e-5)  # two equal members: one network
