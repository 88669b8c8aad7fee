"""Fixtures of the dedup tests: real photos (scikit-image, scikit-learn) and planted copies."""

from __future__ import annotations

import numpy as np
import pytest

PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _photo(name: str):
    from PIL import Image
    from skimage import data

    arr = getattr(data, name)()
    img = Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB")
    img.thumbnail((256, 256))  # small keeps the tests fast; copies are made from this size
    return img


@pytest.fixture(scope="session")
def photos() -> list:
    """Distinct real photos: six from scikit-image and scikit-learn's two sample images."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = [_photo(n) for n in PHOTO_NAMES]
    for arr in load_sample_images().images:
        img = Image.fromarray(arr)
        img.thumbnail((256, 256))
        out.append(img)
    return out


@pytest.fixture(scope="session")
def planted(photos):
    """(images, truth labels, transform names): originals then one copy per transform."""
    from curate.dedup.planting import plant_copies

    ids = [f"p{i}" for i in range(len(photos))]
    copies = plant_copies(photos, ids, ("exact", "jpeg", "resize", "crop", "flip"), seed=0)
    images = list(photos) + [c[0] for c in copies]
    truth = np.array(ids + [c[1] for c in copies])
    kinds = ["original"] * len(photos) + [c[2] for c in copies]
    return images, truth, kinds
