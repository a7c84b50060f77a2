"""Preprocessing as pure functions of uint8 HWC images (or NHWC batches) and a numpy Generator.

Given the same generator state they return the same result, so a pipeline seeded per step is
deterministic. Everything stays uint8 until `normalize`, which runs on the accelerator inside the step
(a quarter of the bytes to move, and no float work on the host).
"""

import math

import numpy as np
from PIL import Image


def pad_crop_flip(
  images: np.ndarray, rng: np.random.Generator, pad: int = 4, first: int = 0, total: int | None = None
) -> np.ndarray:
  """CIFAR augmentation for a batch: zero-pad by `pad`, take a random crop of the original size, flip half.

  He et al. 2015, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled
  from the padded image or its horizontal flip". `images` may be rows first.. of a batch of `total`: the
  draws are made for all `total` and these rows take theirs.
  """
  n, h, w, c = images.shape
  total = total or n
  padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad : pad + h, pad : pad + w] = images
  rows, cols = rng.integers(0, 2 * pad + 1, (2, total))[:, first : first + n]
  flips = (rng.random(total) < 0.5)[first : first + n]
  out = np.empty_like(images)
  for i in range(n):  # one slice copy per image: faster than a fancy-indexed gather over the batch
    crop = padded[i, rows[i] : rows[i] + h, cols[i] : cols[i] + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (antialiased) resize of one uint8 HWC image; the identity when the size already matches."""
  if image.shape[:2] == (height, width):
    return image
  channels = image.shape[2]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR))
  return out[..., None] if channels == 1 else out


def random_crop_window(height: int, width: int, rng: np.random.Generator, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3)):
  """(top, left, crop height, crop width) of a crop covering `area` of the image at aspect ratio `aspect`.

  Ten tries as torchvision; if none fits, the central crop of the closest allowed aspect ratio.
  """
  for _ in range(10):
    target = rng.uniform(*area) * height * width
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < cw <= width and 0 < ch <= height:
      return int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1)), ch, cw
  ratio = min(max(width / height, aspect[0]), aspect[1])
  cw, ch = (
    (width, min(height, round(width / ratio)))
    if width / height < ratio
    else (min(width, round(height * ratio)), height)
  )
  return (height - ch) // 2, (width - cw) // 2, ch, cw


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int, flip=True) -> np.ndarray:
  """ImageNet training crop (Szegedy et al. 2014, section 6): a random crop of 8% to 100% of the area with
  aspect ratio 3/4 to 4/3, resized to size x size, flipped half the time."""
  y, x, ch, cw = random_crop_window(*image.shape[:2], rng)
  out = resize(image[y : y + ch, x : x + cw], size, size)
  return out[:, ::-1] if flip and rng.random() < 0.5 else out


def resize_shorter_center_crop(image: np.ndarray, size: int, shorter: int | None = None) -> np.ndarray:
  """ImageNet evaluation: resize the shorter side to `shorter` (256 for a 224 crop), then a central size x size crop.

  torchvision's arithmetic to the pixel (Resize(256) and CenterCrop(224) on a PIL image), so torchvision's weights
  see what they were evaluated on: the longer side truncated (int, not round), the crop's offset rounded half to even.
  """
  shorter = shorter or round(size * 256 / 224)
  h, w = image.shape[:2]
  if h <= w:
    image = resize(image, max(size, shorter), max(size, int(shorter * w / h)))
  else:
    image = resize(image, max(size, int(shorter * h / w)), max(size, shorter))
  h, w = image.shape[:2]
  y, x = round((h - size) / 2.0), round((w - size) / 2.0)
  return image[y : y + size, x : x + size]


def center_pad(image: np.ndarray, size: int) -> np.ndarray:
  """Zero-pad an image to size x size around its centre: MNIST's 28x28 digits in LeNet-5's 32x32 field."""
  h, w = image.shape[:2]
  if h > size or w > size:
    raise ValueError(f"cannot pad a {h}x{w} image to {size}x{size}")
  top, left = (size - h) // 2, (size - w) // 2
  return np.pad(image, ((top, size - h - top), (left, size - w - left), (0, 0)))


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Grayscale to RGB by repetition, RGB to grayscale by ITU-R 601 luma; unchanged when they already agree."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(luma)[..., None].astype(np.uint8)
  raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def normalize(images, mean, std):
  """(images - mean) / std per channel, as float32; works on numpy and jax arrays alike."""
  return (images.astype("float32") - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
