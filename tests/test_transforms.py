"""Property tests on the preprocessing functions: shapes, dtypes and value ranges are kept, and each
augmentation is what its paper describes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cnnjax.data import transforms

batches = st.integers(1, 6).flatmap(
  lambda n: arrays(np.uint8, st.tuples(st.just(n), st.integers(2, 12), st.integers(2, 12), st.sampled_from([1, 3])))
)
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=50)
@given(batches, seeds, st.integers(0, 4))
def test_pad_crop_flip_is_a_shifted_possibly_flipped_window_of_the_padded_image(images, seed, pad):
  out = transforms.pad_crop_flip(images, np.random.default_rng(seed), pad)
  assert out.shape == images.shape and out.dtype == np.uint8
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for i in range(n):
    windows = [padded[i, y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    assert any(np.array_equal(out[i], win) or np.array_equal(out[i], win[:, ::-1]) for win in windows)


def test_pad_crop_flip_uses_every_offset_and_both_orientations():
  # [[1, 2], [3, 4]] padded by 1 has 9 crop offsets; no crop equals its mirror image, so 18 distinct outputs
  image = np.array([[1, 2], [3, 4]], np.uint8).reshape(1, 2, 2, 1)
  rng = np.random.default_rng(0)
  seen = {transforms.pad_crop_flip(image, rng, pad=1).tobytes() for _ in range(400)}
  assert len(seen) == 18


@settings(max_examples=40)
@given(
  arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]))),
  seeds,
  st.integers(1, 24),
)
def test_random_resized_crop_keeps_dtype_and_range(image, seed, size):
  out = transforms.random_resized_crop(image, np.random.default_rng(seed), size)
  assert out.shape == (size, size, image.shape[2]) and out.dtype == np.uint8
  assert image.min() <= out.min() and out.max() <= image.max()  # bilinear weights are a convex combination


@settings(max_examples=200)
@given(st.integers(1, 500), st.integers(1, 500), seeds)
def test_crop_window_covers_8_to_100_percent_at_aspect_three_quarters_to_four_thirds(h, w, seed):
  y, x, ch, cw = transforms.random_crop_window(h, w, np.random.default_rng(seed))
  assert y >= 0 and y + ch <= h and x >= 0 and x + cw <= w and ch > 0 and cw > 0
  central = (y, x) == ((h - ch) // 2, (w - cw) // 2) and (ch == h or cw == w)
  if not central:  # the fallback is the only window allowed outside the bounds
    # rounding each side to whole pixels moves area and aspect by at most about one pixel
    assert 0.08 * h * w - (ch + cw + 1) <= ch * cw <= h * w
    assert 3 / 4 * (ch - 0.5) / (ch + 0.5) <= cw / ch <= 4 / 3 * (ch + 0.5) / (ch - 0.5) + 1 / ch


@settings(max_examples=40)
@given(arrays(np.uint8, st.tuples(st.integers(1, 60), st.integers(1, 60), st.just(3))), st.integers(1, 30))
def test_eval_crop_shape_and_range(image, size):
  out = transforms.resize_shorter_center_crop(image, size)
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  assert image.min() <= out.min() and out.max() <= image.max()


def test_eval_crop_resizes_the_shorter_side_to_256_for_224():
  assert transforms.resize_shorter_center_crop(np.zeros((300, 600, 3), np.uint8), 224).shape == (224, 224, 3)
  bars = np.tile(np.arange(512, dtype=np.float32)[None, :, None] / 2, (256, 1, 3)).astype(np.uint8)
  crop = transforms.resize_shorter_center_crop(bars, 224)  # already 256 short side: a pure centre crop
  np.testing.assert_array_equal(crop, bars[16:240, 144:368])


@given(
  arrays(np.uint8, st.tuples(st.integers(1, 28), st.integers(1, 28), st.sampled_from([1, 3]))), st.integers(28, 36)
)
def test_center_pad_keeps_the_image_in_the_middle(image, size):
  out = transforms.center_pad(image, size)
  h, w = image.shape[:2]
  top, left = (size - h) // 2, (size - w) // 2
  assert out.shape == (size, size, image.shape[2])
  np.testing.assert_array_equal(out[top : top + h, left : left + w], image)
  assert out.sum(dtype=np.int64) == image.sum(dtype=np.int64)


@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(1))))
def test_gray_to_rgb_and_back_is_the_identity(image):
  rgb = transforms.to_channels(image, 3)
  assert rgb.shape[-1] == 3 and np.array_equal(transforms.to_channels(rgb, 1), image)  # luma weights sum to 1


def test_normalize_by_hand():
  images = np.full((1, 2, 2, 3), 100, np.uint8)
  out = transforms.normalize(images, (100, 50, 0), (1, 2, 4))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, 0, 0], [0, 25, 25])


def test_crop_windows_are_spread_as_inception_sampling_draws_them():
  """Szegedy et al. 2014, section 6 (torchvision's RandomResizedCrop): area uniform in [8%, 100%] of the image,
  aspect ratio log-uniform in [3/4, 4/3], the window anywhere it fits. 4000 draws on a 1000x1000 image (where
  whole pixels move area and aspect by little); bounds are 6 standard deviations of a count."""
  rng = np.random.default_rng(0)
  y, x, ch, cw = np.array([transforms.random_crop_window(1000, 1000, rng) for _ in range(4000)]).T
  area, log_aspect = ch * cw / 1e6, np.log(cw / ch)
  assert 0.08 - 0.002 <= area.min() < 0.09 and area.max() > 0.95
  assert np.log(3 / 4) - 0.01 <= log_aspect.min() < np.log(3 / 4) + 0.02
  assert np.log(4 / 3) - 0.02 < log_aspect.max() <= np.log(4 / 3) + 0.01
  # below 60% of the area every draw fits whatever its aspect, so there the area is uniform: 4 equal bins
  low = area[area < 0.6]
  counts = np.histogram(low, bins=4, range=(0.08, 0.6))[0]
  assert np.all(np.abs(counts - counts.mean()) < 6 * np.sqrt(counts.mean())), counts
  # log-uniform aspect: as many wide as tall windows, and each quarter of the log range equally often
  counts = np.histogram(log_aspect[area < 0.5], bins=4, range=(np.log(3 / 4), np.log(4 / 3)))[0]
  assert np.all(np.abs(counts - counts.mean()) < 6 * np.sqrt(counts.mean())), counts
  # placed anywhere: not centred, the free room used evenly
  centred = (y == (1000 - ch) // 2) & (x == (1000 - cw) // 2)
  assert centred.mean() < 0.02
  room = (ch < 900) & (cw < 900)
  for offset, side in ((y, ch), (x, cw)):
    where = offset[room] / (1000 - side[room])  # 0 at the top/left, 1 at the bottom/right
    assert abs(where.mean() - 0.5) < 0.03 and where.min() < 0.02 and where.max() > 0.98


def test_when_no_try_fits_the_window_is_the_central_crop_of_the_nearest_allowed_aspect():
  # a 10x1000 strip: no window of 8% of its area or more at aspect 3/4..4/3 fits its height of 10, so the
  # central crop at 4/3, the nearest allowed aspect: 10 rows, round(10 * 4/3) = 13 columns, left at (1000 - 13) // 2
  rng = np.random.default_rng(0)
  assert {transforms.random_crop_window(10, 1000, rng) for _ in range(20)} == {(0, 493, 10, 13)}
  # and a 1000x10 strip: at 3/4, 10 columns and round(10 / (3/4)) = 13 rows, top at (1000 - 13) // 2
  assert {transforms.random_crop_window(1000, 10, rng) for _ in range(20)} == {(493, 0, 13, 10)}


def test_random_resized_crop_flips_half_the_images():
  # brightness grows left to right, so a flipped crop is darker on its right
  image = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (64, 1, 3))
  rng = np.random.default_rng(0)
  crops = [transforms.random_resized_crop(image, rng, 16) for _ in range(1000)]
  flipped = np.mean([int(c[:, 0].sum()) > int(c[:, -1].sum()) for c in crops])
  assert abs(flipped - 0.5) < 5 * np.sqrt(0.25 / 1000)
  assert not any(int(c[:, 0].sum()) == int(c[:, -1].sum()) for c in crops)  # every crop has a direction
  no_flip = [transforms.random_resized_crop(image, rng, 16, flip=False) for _ in range(50)]
  assert all(int(c[:, 0].sum()) < int(c[:, -1].sum()) for c in no_flip)
