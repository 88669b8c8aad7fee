"""curate: clean image-caption datasets so diffusion models create instead of copying."""

from curate._version import __version__

__all__ = ["__version__"]
