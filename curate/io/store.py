"""The run's image store: an Arrow dataset (``save_to_disk``) of ``sample_id`` + encoded image.

Images are kept encoded (the source bytes when they were already RGB JPEG/PNG/WebP, else a
lossless PNG of the RGB conversion), so a run folder never holds decoded pixels and export can
write exactly what came in. Rows whose image could not be decoded have no image (null).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from curate.core.images import decode_rgb_many
from curate.errors import DataError

IMAGES_DIR = "images"


class ImageStore:
    """Read access to ``RUN_DIR/images`` by ``sample_id``."""

    def __init__(self, run_dir: Path | str):
        self.path = Path(run_dir) / IMAGES_DIR
        if not self.path.exists():
            raise DataError(f"{self.path} does not exist: run `curate ingest` first")
        from datasets import Image, load_from_disk

        ds = load_from_disk(str(self.path))
        self.dataset = ds.cast_column("image", Image(decode=False))
        self._row = {sid: i for i, sid in enumerate(self.dataset["sample_id"])}

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._row

    def encoded(self, sample_id: str) -> bytes | None:
        """The stored bytes of one image (None for a rejected row)."""
        cell = self.dataset[self._row[sample_id]]["image"]
        return None if cell is None else cell["bytes"]

    def encoded_many(self, sample_ids: Sequence[str]) -> list[bytes | None]:
        """The stored bytes per id (None for rows without an image), one read for all."""
        rows = self.dataset.select([self._row[s] for s in sample_ids])["image"]
        return [None if cell is None else cell.get("bytes") for cell in rows]

    def get(self, sample_ids: Sequence[str]) -> list:
        """Decoded RGB ``PIL.Image`` per id (None for rows without an image)."""
        return decode_rgb_many(self.encoded_many(sample_ids))

    def iter_batches(
        self, sample_ids: Sequence[str], batch_size: int = 64
    ) -> Iterator[tuple[list[str], list]]:
        """Yield ``(ids, images)`` in the given order, ``batch_size`` at a time."""
        ids = list(sample_ids)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            yield chunk, self.get(chunk)
