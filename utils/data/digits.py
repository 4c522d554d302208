"""The built-in offline dataset: scikit-learn's 1,797 real 8x8 handwritten digits as RGB PIL images."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits


def load_digits_dataset() -> DatasetDict:
    """All digits as one `train` split with columns `image` (8x8 RGB) and `labels` (ClassLabel "0".."9").

    The evaluation split is held out by the common rule in `utils.data` (stratified, fixed seed), as for any
    dataset without one.
    """
    digits = load_digits()
    # Pixel values are ink counts 0..16; scale to 0..255 grey levels.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = [PILImage.fromarray(image, mode="L").convert("RGB") for image in pixels]
    features = Features({"image": Image(), "labels": ClassLabel(names=[str(d) for d in range(10)])})
    train = Dataset.from_dict({"image": images, "labels": digits.target.tolist()}, features=features)
    return DatasetDict({"train": train})
