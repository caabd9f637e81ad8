"""scikit-learn's 8x8 handwritten digits as a TFDS dataset, built locally on first use.

1,797 grey-scale images of the digits 0-9, shipped inside scikit-learn (no download).
The held-out split is fixed once for all: a permutation seeded with 0 puts one fifth of
the images (359) in 'test' and the rest (1,438) in 'train'.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 359
SPLIT_SEED = 0


class Digits(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the digits; `features.Tensor` keeps it free of TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Seeded 80/20 train/test split of sklearn's load_digits."}
  # jaxtrain prepares builders marked like this on first use (nothing to download).
  BUILT_LOCALLY = True

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="8x8 handwritten digits from scikit-learn, scaled to 0-255.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    order = np.random.default_rng(SPLIT_SEED).permutation(_num_images())
    return {
        "train": self._generate_examples(order[NUM_TEST:]),
        "test": self._generate_examples(order[:NUM_TEST]),
    }

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    # sklearn's pixels are 0..16; scale to the usual 0..255 of an image.
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    for i in indices:
      yield int(i), {"image": images[i], "label": int(digits.target[i])}


def _num_images():
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  return len(load_digits().target)
