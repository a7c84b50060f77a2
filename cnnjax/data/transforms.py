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


# PIL's filters by name: the interpolations GoogLeNet's training drew among (section 6), 'area' being PIL's box filter
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "area": Image.BOX, "nearest": Image.NEAREST, "cubic": Image.BICUBIC}


def resize(image: np.ndarray, height: int, width: int, method: str = "bilinear", box=None) -> np.ndarray:
  """Resize of one uint8 HWC image (antialiased: PIL's filters widen when they shrink); the identity when the size
  already matches. `box` (left, top, right, bottom, in pixels of `image`, fractions allowed): resize that region
  only, which is the same window of the whole image resized, without resizing the rest."""
  if image.shape[:2] == (height, width) and box is None:
    return image
  channels = image.shape[2]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), INTERPOLATIONS[method], box=box))
  return out[..., None] if channels == 1 else out


def shorter_side_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
  """(height, width) of an image resized to shorter side `shorter`: torchvision's Resize(int) to the pixel, the
  longer side truncated (int, not round)."""
  return (shorter, int(shorter * width / height)) if height <= width else (int(shorter * height / width), shorter)


def window_of_resized(image: np.ndarray, shape, top: int, left: int, size: int) -> np.ndarray:
  """The size x size window at (top, left) of `image` resized to `shape`, resizing only that window (PIL's `box`):
  within one level of cropping the whole resized image, at a fraction of the cost when the scale is large."""
  (h, w), (rh, rw) = image.shape[:2], shape
  box = (left * w / rw, top * h / rh, (left + size) * w / rw, (top + size) * h / rh)
  return resize(image, size, size, box=box)


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


def random_resized_crop(
  image: np.ndarray, rng: np.random.Generator, size: int, flip=True, method: str = "bilinear"
) -> np.ndarray:
  """ImageNet training crop (Szegedy et al. 2014, section 6): a random crop of 8% to 100% of the area with
  aspect ratio 3/4 to 4/3, resized to size x size by `method`, flipped half the time."""
  y, x, ch, cw = random_crop_window(*image.shape[:2], rng)
  out = resize(image[y : y + ch, x : x + cw], size, size, method)  # torchvision's order: crop, then resize
  return out[:, ::-1] if flip and rng.random() < 0.5 else out


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.4) -> np.ndarray:
  """Brightness, contrast and saturation, each scaled by a factor uniform in [1 - strength, 1 + strength], in a
  random order, clipped to 0..255 after each (torchvision's ColorJitter(0.4, 0.4, 0.4) arithmetic, which
  fb.resnet.torch also used): brightness scales the pixels, contrast blends them with the image's mean grey level,
  saturation with each pixel's own grey (ITU-R 601 luma). RGB uint8 in and out."""
  factors = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
  out = image.astype(np.float32)  # float32 throughout, in place: a quarter of the float64 version's time
  for i in rng.permutation(3):
    if i == 0:  # brightness: towards black
      out *= factors[0]
    else:
      grey = out @ LUMA
      toward = np.float32(grey.mean()) if i == 1 else grey[..., None]
      out -= toward
      out *= factors[i]
      out += toward
    np.clip(out, 0, 255, out=out)
  return np.round(out).astype(np.uint8)


# The ImageNet training set's RGB covariance as fb.resnet.torch gives it, for pixels in [0, 1]: eigenvalues and
# eigenvectors (one per column; rows R, G, B).
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def lighting_shift(rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
  """AlexNet's colour shift (Krizhevsky et al. 2012, section 4.1) for one image, in 0..255 pixel units: sum_i
  alpha_i lambda_i p_i with alpha_i ~ N(0, std), times 255 (the eigenvalues are for pixels in [0, 1])."""
  return 255 * PCA_EIGENVECTORS @ (rng.normal(0.0, std, 3) * PCA_EIGENVALUES)


def lighting(image: np.ndarray, rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
  """`image` (uint8 RGB) with AlexNet's colour shift added to every pixel, rounded and clipped to uint8 (it
  stays uint8 on the host: the shift, a few levels, loses its fraction)."""
  shifted = image.astype(np.float32) + lighting_shift(rng, std).astype(np.float32)
  return np.clip(np.round(shifted), 0, 255).astype(np.uint8)


def scale_crop_window(height: int, width: int, rng: np.random.Generator, size: int, shorter=(256, 512)):
  """(S, top, left, flip) of a scale-jittered crop: S drawn uniformly from the integers of `shorter`, then a
  size x size window of the image resized to shorter side S, mirrored half the time."""
  scale = int(rng.integers(shorter[0], shorter[1] + 1))
  h, w = shorter_side_shape(height, width, scale)
  return scale, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), bool(rng.random() < 0.5)


def random_scale_crop(image: np.ndarray, rng: np.random.Generator, size: int, shorter=(256, 512)) -> np.ndarray:
  """VGG's scale jittering (Simonyan & Zisserman, section 3.1; ResNet's scale augmentation with (256, 480)): the
  shorter side resized to a random S in `shorter`, a random size x size crop, flipped half the time."""
  scale, y, x, flip = scale_crop_window(*image.shape[:2], rng, size, shorter)
  out = window_of_resized(image, shorter_side_shape(*image.shape[:2], scale), y, x, size)
  return out[:, ::-1] if flip else out


def resize_shorter(image: np.ndarray, shorter: int) -> np.ndarray:
  """The image resized so that its shorter side is `shorter` (shorter_side_shape)."""
  return resize(image, *shorter_side_shape(*image.shape[:2], shorter))


def crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int]]:
  """(top, left) of the four corner crops and the centre crop of `size`, in torchvision's FiveCrop order:
  top-left, top-right, bottom-left, bottom-right, centre (its offset rounded half to even, as CenterCrop)."""
  bottom, right = height - size, width - size
  return [(0, 0), (0, right), (bottom, 0), (bottom, right), (round(bottom / 2.0), round(right / 2.0))]


def resize_shorter_center_crop(image: np.ndarray, size: int, shorter: int | None = None) -> np.ndarray:
  """ImageNet evaluation: resize the shorter side to `shorter` (256 for a 224 crop), then a central size x size crop.

  torchvision's arithmetic to the pixel (Resize(256) and CenterCrop(224) on a PIL image), so torchvision's weights
  see what they were evaluated on.
  """
  image = resize_shorter(image, max(size, shorter or round(size * 256 / 224)))
  y, x = crop_boxes(*image.shape[:2], size)[4]
  return image[y : y + size, x : x + size]


def ten_crop(image: np.ndarray, size: int = 224, shorter: int = 256) -> np.ndarray:
  """AlexNet's test crops (Krizhevsky et al. 2012, section 4.1): the shorter side resized to `shorter`, the four
  corner and the centre size x size patches, then the same five of the mirrored image; uint8 [10, size, size, C]
  in torchvision's Resize(shorter) + TenCrop(size) order."""
  image = resize_shorter(image, shorter)
  crops = [
    view[y : y + size, x : x + size] for view in (image, image[:, ::-1]) for y, x in crop_boxes(*image.shape[:2], size)
  ]
  return np.stack(crops)


GOOGLENET_SCALES = (256, 288, 320, 352)  # GoogLeNet section 7: the shorter sides of its 144-crop test


def googlenet_boxes(height: int, width: int, size: int = 224) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
  """The 24 crops per scale of GoogLeNet's test, before mirroring, for a `height` x `width` image: (shorter side S,
  (top, left) of an S x S square in the image resized to S, (top, left) of a size x size crop in that square, or
  None for the whole square resized to `size`). Squares: left, centre, right (top, centre, bottom if portrait);
  crops: the four corners, the centre, the square itself."""
  boxes = []
  for scale in (round(s * size / 224) for s in GOOGLENET_SCALES):  # 256..352 for 224; in proportion for others
    long_side = int(scale * max(height, width) / min(height, width))
    offsets = (0, round((long_side - scale) / 2.0), long_side - scale)
    squares = [(0, o) if width >= height else (o, 0) for o in offsets]
    for square in squares:
      boxes.extend((scale, square, crop) for crop in [*crop_boxes(scale, scale, size), None])
  return boxes


def googlenet_crops(image: np.ndarray, size: int = 224) -> np.ndarray:
  """GoogLeNet's 144 test crops (Szegedy et al. 2014, section 7): at each of 4 scales, 3 squares, from each the 4
  corners, the centre and the square resized, and the mirror of each: uint8 [144, size, size, C], for each scale
  and square its six crops, then their six mirrors."""
  resized, crops = {}, []
  for scale, (top, left), crop in googlenet_boxes(*image.shape[:2], size):
    if scale not in resized:
      resized[scale] = resize_shorter(image, scale)
    square = resized[scale][top : top + scale, left : left + scale]
    crops.append(
      resize(square, size, size) if crop is None else square[crop[0] : crop[0] + size, crop[1] : crop[1] + size]
    )
  crops = np.stack(crops).reshape(len(GOOGLENET_SCALES) * 3, 6, size, size, -1)
  return np.concatenate([crops, crops[:, :, :, ::-1]], axis=1).reshape(-1, size, size, image.shape[2])


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
    return np.round(images.astype(np.float32) @ LUMA)[..., None].astype(np.uint8)
  raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def normalize(images, mean, std):
  """(images - mean) / std per channel, as float32; works on numpy and jax arrays alike."""
  return (images.astype("float32") - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
