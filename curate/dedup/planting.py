"""Known copies of real images (calibration, tests, the benchmark): the transforms live in the
data layer, ``curate.data.planting``, so the built-in datasets can plant copies too."""

from curate.data.planting import TRANSFORMS, Transform, plant_copies, tiles

__all__ = ["TRANSFORMS", "Transform", "plant_copies", "tiles"]
