"""Each paper's data recipe: what its training did to a photo (`augment`) and how its test looked at one
(`eval_protocol`), as pure functions of a uint8 image and a numpy generator.

Training recipes for ImageNet-style photos (sizes are for a 224 input; at another input they scale in proportion,
256 meaning round(256 x size / 224)):
- `alexnet` (Krizhevsky et al. 2012, section 4.1): shorter side to 256, the central 256 x 256, a random 224 x 224
  patch of it, mirrored half the time; PCA lighting.
- `vgg` (Simonyan & Zisserman, section 3.1, multi-scale training): shorter side S uniform in [256, 512], a random
  224 crop, mirrored half the time; AlexNet's lighting.
- `resnet` (He et al. 2015, section 3.4): the same with S in [256, 480].
- `inception` (Szegedy et al. 2014, section 6): 8% to 100% of the area at aspect 3/4 to 4/3, resized by an
  interpolation drawn among bilinear, area, nearest and cubic, mirrored half the time; photometric distortions,
  which the paper names without parameters: brightness, contrast and saturation each scaled by a factor in
  [0.6, 1.4], in a random order (torchvision's ColorJitter(0.4, 0.4, 0.4), fb.resnet.torch's choice).
- `none`: the test's own view (shorter side 256, the centre 224 crop).
CIFAR-style images take `cifar` (He et al. 2015, section 4.2: 4 pixels of padding, a random crop, a flip; made for a
whole batch at once in transforms.pad_crop_flip) or `none`. Datasets that are only resized or padded to the model
(digits, MNIST) take no recipe.

Every recipe keeps cnnjax's per-channel mean and standard deviation (on the device, in the step). AlexNet subtracted
a per-pixel mean image and VGG and ResNet a per-channel mean; the difference is a fixed affine map of the input.
The lighting and the colour jitter act on RGB photos; a greyscale photo keeps its geometry-only part.
"""

import numpy as np

from cnnjax.data import transforms

IMAGENET_RECIPES = ("alexnet", "vgg", "resnet", "inception", "none")
CIFAR_RECIPES = ("cifar", "none")
RECIPES = ("alexnet", "vgg", "resnet", "inception", "cifar", "none")


def scaled(side: int, size: int) -> int:
  """A paper's length for a 224 input at input `size`."""
  return round(side * size / 224)


def _photometric(image: np.ndarray, change, rng: np.random.Generator) -> np.ndarray:
  return change(image, rng) if image.shape[-1] == 3 else image


def _mirrored(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def alexnet(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  side = scaled(256, size)
  shape = transforms.shorter_side_shape(*image.shape[:2], side)
  top, left = transforms.crop_boxes(*shape, side)[4]  # the central side x side square
  y, x = (int(v) for v in rng.integers(0, side - size + 1, 2))
  crop = _mirrored(transforms.window_of_resized(image, shape, top + y, left + x, size), rng)
  return _photometric(crop, transforms.lighting, rng)


def scale_jittered(shorter: tuple[int, int]):
  """VGG's and ResNet's recipe for shorter sides `shorter` (at 224)."""

  def recipe(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    crop = transforms.random_scale_crop(image, rng, size, shorter=tuple(scaled(s, size) for s in shorter))
    return _photometric(crop, transforms.lighting, rng)

  return recipe


def inception(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  method = str(rng.choice(list(transforms.INTERPOLATIONS)))
  crop = transforms.random_resized_crop(image, rng, size, method=method)
  return _photometric(crop, transforms.color_jitter, rng)


def center_view(image: np.ndarray, rng: np.random.Generator | None, size: int) -> np.ndarray:
  return transforms.resize_shorter_center_crop(image, size)


TRAINING = {
  "alexnet": alexnet,
  "vgg": scale_jittered((256, 512)),
  "resnet": scale_jittered((256, 480)),
  "inception": inception,
  "none": center_view,
}


def check_recipe(recipe: str, style: str):
  """ValueError, in one line, for a recipe the dataset's images do not take (any recipe is fine, and ignored, on
  datasets that are only resized or padded to the model)."""
  if recipe not in RECIPES:
    raise ValueError(f"unknown augment {recipe!r}; valid: {', '.join(RECIPES)}")
  if style == "imagenet" and recipe not in IMAGENET_RECIPES:
    raise ValueError(
      f"augment {recipe!r} pads CIFAR-sized images; ImageNet-style photos take {', '.join(IMAGENET_RECIPES)}"
    )
  if style == "cifar" and recipe not in CIFAR_RECIPES:
    raise ValueError(
      f"augment {recipe!r} is for ImageNet-style photos; CIFAR-style images take {' or '.join(CIFAR_RECIPES)} "
      "(--config.augment=cifar)"
    )


# How many views of each test image an evaluation protocol averages ('dense': two per scale, the image and its
# mirror, each scored over the whole image)
PROTOCOL_VIEWS = {"center": 1, "ten_crop": 10, "googlenet144": 144}
PROTOCOLS = (*PROTOCOL_VIEWS, "dense")
STRIDE = 32  # every zoo network's total stride: a dense view's longer side is cut to a multiple of it


def views_per_image(protocol: str, scales=()) -> int:
  return 2 * len(scales) if protocol == "dense" else PROTOCOL_VIEWS[protocol]


def check_protocol(protocol: str, style: str, input_shape):
  """ValueError, in one line, for a test protocol the dataset's images do not allow."""
  if protocol == "ten_crop" and style not in ("imagenet", "cifar"):
    raise ValueError(
      "eval_protocol 'ten_crop' needs ImageNet-style photos or CIFAR-style images (cropped from their 4-pixel "
      "padding); this dataset's images are only resized or padded to the model"
    )
  if protocol == "googlenet144" and style != "imagenet":
    raise ValueError("eval_protocol 'googlenet144' needs ImageNet-style photos (4 scales of 1.1 to 1.6x the input)")
  if protocol == "dense" and style != "imagenet":
    raise ValueError("eval_protocol 'dense' needs ImageNet-style photos (the whole image at several scales)")


def eval_views(image: np.ndarray, input_shape, style: str, protocol: str) -> np.ndarray:
  """The crops of one test image a protocol averages over, uint8 [views, H, W, C]: AlexNet's ten (the shorter side
  at 256/224 of the input; a CIFAR image padded by 4 pixels, as its training crops are drawn) or GoogLeNet's 144."""
  size, _, channels = input_shape
  if protocol == "ten_crop" and style == "cifar":
    views = transforms.ten_crop(transforms.center_pad(image, size + 8), size, size + 8)
  elif protocol == "ten_crop":
    views = transforms.ten_crop(image, size, scaled(256, size))
  else:
    views = transforms.googlenet_crops(image, size)
  return transforms.to_channels(views, channels)


def dense_views(image: np.ndarray, input_shape, scales) -> list[np.ndarray]:
  """The whole image at each scale of a dense evaluation (VGG section 3.2; ResNet section 3.4): its shorter side
  resized to Q (at 224; in proportion at other inputs), its longer side cut, centred, to a multiple of the networks'
  stride of 32 (at least Q), so that images group into few shapes and each shape compiles once. The cut loses
  less than 32 pixels, which the networks' stride-2 pools mostly drop anyway; the mirror is made on the device."""
  _, size, channels = input_shape
  views = []
  for scale in (scaled(q, size) for q in scales):
    resized = transforms.resize_shorter(image, scale)
    h, w = resized.shape[:2]
    keep_h, keep_w = (max(scale, n // STRIDE * STRIDE) if n > scale else n for n in (h, w))
    top, left = (h - keep_h) // 2, (w - keep_w) // 2
    views.append(transforms.to_channels(resized[top : top + keep_h, left : left + keep_w], channels))
  return views
