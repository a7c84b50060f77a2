"""`digits`: the bundled offline dataset, as a tensorflow-datasets builder prepared without TensorFlow.

The 1,797 real 8x8 handwritten digits (UCI optical recognition of handwritten digits, preprocessed by
NIST's programs) that scikit-learn ships inside its package, so everything in cnnjax runs with no network.
Pixel counts 0..16 are scaled by 16 to uint8 (16 -> 255). The split is fixed: a permutation with seed 0,
the first 1,500 for training and the remaining 297 for test.
"""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500


def _arrays():
  from sklearn.datasets import load_digits  # the data file lies inside scikit-learn's package

  digits = load_digits()
  images = np.minimum(digits.images * 16, 255).astype(np.uint8)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  return images[order], digits.target[order].astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, 1,500 train / 297 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Fixed split: permutation seed 0, first 1,500 train."}

  def _info(self):
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          # a Tensor feature, not Image: preparing and reading it needs no TensorFlow
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
      "train": self._generate_examples(slice(0, NUM_TRAIN)),
      "test": self._generate_examples(slice(NUM_TRAIN, None)),
    }

  def _generate_examples(self, part):
    images, labels = _arrays()
    indices = np.arange(len(images))[part]
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}
