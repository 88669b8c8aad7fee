"""Built-in offline datasets: ``builtin:digits``, ``builtin:photos`` and the protect loop's
``builtin:digits_loop`` / ``builtin:digits_loop_heldout`` (described at their code), generated from images that
ship inside the scikit-learn and scikit-image wheels, so demos and tests never touch the network.

Both are deterministic: every call returns the same rows with the same encoded bytes (fixed PNG
and JPEG settings; the only randomness, the blob textures, comes from fixed seeds through
``curate.seeding``).

``digits`` (1,797 rows)
    scikit-learn's ``load_digits``: 8x8 grey handwritten digits, values 0..16 scaled to 0..255.
    Columns: ``image`` (``datasets.Image``, PNG bytes), ``text`` ("a handwritten digit seven"),
    ``label`` (int 0..9).

``photos`` (62 rows), a small dataset with a planted answer key
    Columns: ``image`` (``datasets.Image(decode=False)``: ``{"bytes", "path"}`` cells, so the
    broken rows survive until validation looks at them), ``text``, and the ground truth:

    ``gt_group`` (int)
        The distinct picture a row shows: the index of its original, shared by all its copies.
        ``-1`` for the rows under the ``bad_*`` transforms, which stand outside the duplicate key.
    ``gt_transform`` (str)
        ``original`` (30 rows: 26 photos, 2 extra blob textures, 2 faces), or how a copy was made
        from its original: ``exact`` (the same bytes), ``jpeg`` (decoded and re-encoded as JPEG
        quality 40), ``resize`` (0.5x, Lanczos), ``crop`` (centre 80 %), ``flip`` (horizontal);
        26 copies in all. Six rows give validation work: ``bad_truncated`` (the first half of a
        JPEG), ``bad_zero_bytes`` (an empty file), ``bad_empty_caption`` (a fine image with
        caption ""), ``bad_rgba`` (an RGBA PNG), ``bad_palette`` (a "P" mode PNG), ``bad_16bit``
        (an "I;16" grey PNG).
    ``gt_caption`` (str)
        ``original``: the caption written for this picture; ``same``: a copy that carries its
        original's caption word for word (a duplicated image-caption pair); ``different``: a copy
        with a new caption (same image, different caption); ``reused``: a distinct picture whose
        caption is word for word the caption of another picture (same caption, different
        images); ``empty``: the empty-caption row.
    ``gt_name`` (str)
        The name of the source picture (``astronaut``, ``blobs_1``, ``face_0``, ...).

    Row order: the 30 distinct pictures (``gt_group`` 0..29 in order), then the copies, then the
    six bad rows. Colour photos are stored as JPEG (quality 90), grey and synthetic pictures as
    PNG; every picture is first downscaled so its long side is at most 256 px. The stereo pair
    ``motorcycle_left`` / ``motorcycle_right`` are two real, slightly different photos of one
    scene: distinct groups on purpose, a hard negative for near-duplicate detection.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import DataError, MissingDependencyError
from curate.seeding import derive_seed

if TYPE_CHECKING:
    import datasets
    from PIL import Image as PILImage

BUILTINS: tuple[str, ...] = ("digits", "photos", "digits_loop", "digits_loop_heldout")

MAX_SIDE = 256
JPEG_QUALITY = 90
COPY_JPEG_QUALITY = 40

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_builtin(name: str) -> datasets.Dataset:
    """Return the built-in dataset ``name`` (one of ``BUILTINS``) as a ``datasets.Dataset``."""
    key = name.removeprefix("builtin:")
    if key == "digits":
        return _digits_dataset()
    if key == "photos":
        return _photos_dataset()
    if key == "digits_loop":
        return _loop_dataset()
    if key == "digits_loop_heldout":
        return _loop_heldout_dataset()
    raise DataError(f"unknown built-in dataset {name!r}: use one of {', '.join(BUILTINS)}")


# --------------------------------------------------------------------------------------- encoding


def _png(img: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _jpeg(img: PILImage.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    # Fixed subsampling and no optimisation: the same pixels always give the same bytes.
    img.save(buf, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue()


def _encode(img: PILImage.Image, fmt: str) -> bytes:
    return _jpeg(img, JPEG_QUALITY) if fmt == "jpeg" else _png(img)


def _decode(data: bytes) -> PILImage.Image:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Bool, float in [0, 1] or uint8 arrays as uint8."""
    if arr.dtype == bool:
        return np.where(arr, 255, 0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return arr.astype(np.uint8)


def _fit(img: PILImage.Image, max_side: int = MAX_SIDE) -> PILImage.Image:
    """Downscale (never upscale) so the long side is at most ``max_side``."""
    from PIL import Image

    w, h = img.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------------------- digits


@lru_cache(maxsize=1)
def _digits_rows() -> tuple[list[bytes], list[str], list[int]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (N, 8, 8)
    images = [_png(Image.fromarray(p, mode="L")) for p in pixels]
    labels = [int(t) for t in bunch.target]
    texts = [f"a handwritten digit {_DIGIT_WORDS[t]}" for t in labels]
    return images, texts, labels


def _digits_dataset() -> datasets.Dataset:
    from datasets import ClassLabel, Dataset, Features, Image, Value

    images, texts, labels = _digits_rows()
    features = Features(
        {"image": Image(), "text": Value("string"), "label": ClassLabel(names=list(_DIGIT_WORDS))}
    )
    return Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "text": texts, "label": labels},
        features=features,
    )


# ----------------------------------------------------------------------------------------- photos


@dataclass(frozen=True)
class _Picture:
    name: str
    load: Callable[[], np.ndarray]
    caption: str
    fmt: str  # "jpeg" for colour photos, "png" for grey and synthetic pictures
    caption_kind: str = "original"


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import importlib.util
        from pathlib import Path

        from PIL import Image

        # Read the JPEG straight from the wheel: importing sklearn costs seconds, and
        # sklearn.datasets.load_sample_image does no more than this.
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise MissingDependencyError("scikit-learn", "builtin:photos")
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images" / filename
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))

    return load


def _stereo(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return data.stereo_motorcycle()[index]

    return load


def _blobs(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        seed = derive_seed("builtin:photos", "blobs", index) % (2**32)
        return data.binary_blobs(length=192, blob_size_fraction=0.1, rng=seed)

    return load


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()  # (200, 25, 25) float in [0, 1]; the first 100 are faces


def _face(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image

        face = _to_uint8(_lfw()[index])  # (25, 25)
        # 25 px is below any sensible minimum size: upscale 4x so the face survives validation.
        return np.asarray(Image.fromarray(face).resize((100, 100), Image.Resampling.BICUBIC))

    return load


_BLOB_CAPTION = "black and white random blobs"
_FACE_CAPTION = "a small grey photo of a face"

# The distinct pictures, in gt_group order.
# fmt: off
_PICTURES: tuple[_Picture, ...] = (
    _Picture("astronaut", _skimage("astronaut"), "an astronaut in a white spacesuit in front of a flag", "jpeg"),
    _Picture("camera", _skimage("camera"), "a black and white photo of a man with a camera on a tripod", "png"),
    _Picture("chelsea", _skimage("chelsea"), "a tabby cat looking to the side", "jpeg"),
    _Picture("coffee", _skimage("coffee"), "a cup of coffee on a saucer seen from above", "jpeg"),
    _Picture("rocket", _skimage("rocket"), "a rocket on its launch pad under a blue sky", "jpeg"),
    _Picture("brick", _skimage("brick"), "a grey brick wall texture", "png"),
    _Picture("coins", _skimage("coins"), "old coins laid out in rows", "png"),
    _Picture("grass", _skimage("grass"), "a close-up texture of grass in black and white", "png"),
    _Picture("gravel", _skimage("gravel"), "a close-up texture of gravel", "png"),
    _Picture("horse", _skimage("horse"), "the black silhouette of a horse on white", "png"),
    _Picture("hubble_deep_field", _skimage("hubble_deep_field"), "a deep field image of distant galaxies", "jpeg"),
    _Picture("immunohistochemistry", _skimage("immunohistochemistry"), "a microscope image of stained tissue", "jpeg"),
    _Picture("moon", _skimage("moon"), "the surface of the moon with craters", "png"),
    _Picture("page", _skimage("page"), "a scanned page of printed text", "png"),
    _Picture("text", _skimage("text"), "a grey photo of printed letters", "png"),
    _Picture("clock", _skimage("clock"), "a motion blurred photo of a wall clock", "png"),
    _Picture("colorwheel", _skimage("colorwheel"), "a colour wheel of saturated hues", "png"),
    _Picture("checkerboard", _skimage("checkerboard"), "a black and white checkerboard", "png"),
    _Picture("retina", _skimage("retina"), "a fundus photograph of a human retina", "jpeg"),
    _Picture("microaneurysms", _skimage("microaneurysms"), "a grey close-up of retinal blood vessels", "png"),
    _Picture("cell", _skimage("cell"), "a microscope image of a single cell", "png"),
    _Picture("motorcycle_left", _stereo(0), "a red motorcycle in a workshop", "jpeg"),
    _Picture("motorcycle_right", _stereo(1), "a red motorcycle in a workshop seen from the right", "jpeg"),
    _Picture("china", _sklearn("china.jpg"), "a chinese temple roof among trees", "jpeg"),
    _Picture("flower", _sklearn("flower.jpg"), "a pink flower with a yellow centre", "jpeg"),
    _Picture("blobs_0", _blobs(0), _BLOB_CAPTION, "png"),
    _Picture("blobs_1", _blobs(1), _BLOB_CAPTION, "png", caption_kind="reused"),
    _Picture("blobs_2", _blobs(2), _BLOB_CAPTION, "png", caption_kind="reused"),
    _Picture("face_0", _face(0), _FACE_CAPTION, "png"),
    _Picture("face_1", _face(1), _FACE_CAPTION, "png", caption_kind="reused"),
)
# fmt: on

# The planted copies: (source picture, transform, caption). None = the source's caption ("same").
_COPIES: tuple[tuple[str, str, str | None], ...] = (
    ("astronaut", "exact", None),
    ("coffee", "exact", None),
    ("chelsea", "exact", None),
    ("face_0", "exact", None),
    ("coins", "exact", "a handful of silver coins"),
    ("moon", "exact", "a grey planet surface"),
    ("rocket", "jpeg", None),
    ("china", "jpeg", None),
    ("flower", "jpeg", None),
    ("astronaut", "jpeg", None),
    ("gravel", "jpeg", None),
    ("hubble_deep_field", "jpeg", "a starry night sky full of galaxies"),
    ("camera", "jpeg", "a photographer in a park, an old photo"),
    ("chelsea", "resize", None),
    ("retina", "resize", None),
    ("brick", "resize", "an old stone wall"),
    ("colorwheel", "resize", "a rainbow circle"),
    ("astronaut", "crop", None),
    ("immunohistochemistry", "crop", None),
    ("text", "crop", None),
    ("page", "crop", "a document with lines of text"),
    ("clock", "crop", "an analog clock on a wall"),
    ("flower", "flip", None),
    ("horse", "flip", None),
    ("coffee", "flip", "a morning espresso"),
    ("rocket", "flip", "a launch tower and a rocket"),
)


def _picture_image(pic: _Picture) -> PILImage.Image:
    from PIL import Image

    arr = _to_uint8(pic.load())
    mode = "L" if arr.ndim == 2 else "RGB"
    return _fit(Image.fromarray(arr, mode=mode))


def _copy_bytes(source: bytes, fmt: str, transform: str) -> bytes:
    from PIL import Image, ImageOps

    if transform == "exact":
        return source
    img = _decode(source)
    if transform == "jpeg":
        return _jpeg(img.convert("RGB") if img.mode not in ("L", "RGB") else img, COPY_JPEG_QUALITY)
    if transform == "resize":
        w, h = img.size
        img = img.resize((max(1, round(w * 0.5)), max(1, round(h * 0.5))), Image.Resampling.LANCZOS)
    elif transform == "crop":
        w, h = img.size
        left, top = round(w * 0.1), round(h * 0.1)
        img = img.crop((left, top, left + round(w * 0.8), top + round(h * 0.8)))
    elif transform == "flip":
        img = ImageOps.mirror(img)
    else:  # pragma: no cover - _COPIES is a constant
        raise ValueError(transform)
    return _encode(img, fmt)


def _bad_rows() -> list[dict]:
    """The six rows that give validation work (gt_group -1)."""
    from PIL import Image
    from skimage import data

    face = _face(5)()
    truncated = _jpeg(Image.fromarray(face, mode="L"), JPEG_QUALITY)
    truncated = truncated[: len(truncated) // 2]

    logo = _fit(Image.fromarray(data.logo(), mode="RGBA"))  # (H, W, 4)

    disparity = data.stereo_motorcycle()[2].astype(np.float64)  # (H, W), inf where unknown
    finite = np.isfinite(disparity)
    low, high = disparity[finite].min(), disparity[finite].max()
    disparity = np.where(finite, (disparity - low) / max(high - low, 1e-12), 0.0)
    depth = _fit(Image.fromarray(_to_uint8(disparity), mode="L").convert("RGB"))
    palette = depth.quantize(colors=32, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)

    phantom = data.shepp_logan_phantom()  # (400, 400) float in [0, 1]
    grey16 = np.clip(np.round(phantom * 65535.0), 0, 65535).astype(np.uint16)
    grey16_img = _fit(Image.fromarray(grey16).convert("I")).convert("I;16")

    empty_caption_img = _png(Image.fromarray(_face(6)(), mode="L"))
    return [
        _row(truncated, "a portrait photo of a man", -1, "bad_truncated", "original", "face_5"),
        _row(b"", "a photo that failed to download", -1, "bad_zero_bytes", "original", "none"),
        _row(empty_caption_img, "", -1, "bad_empty_caption", "empty", "face_6"),
        _row(_png(logo), "the scikit-image logo", -1, "bad_rgba", "original", "logo"),
        _row(
            _png(palette), "a depth map of a motorcycle", -1, "bad_palette", "original", "disparity"
        ),
        _row(
            _png(grey16_img),
            "the shepp-logan phantom, a test slice of a head",
            -1,
            "bad_16bit",
            "original",
            "shepp_logan_phantom",
        ),
    ]


def _row(image: bytes, text: str, group: int, transform: str, caption: str, name: str) -> dict:
    return {
        "image": image,
        "text": text,
        "gt_group": group,
        "gt_transform": transform,
        "gt_caption": caption,
        "gt_name": name,
    }


@lru_cache(maxsize=1)
def _photos_rows() -> tuple[dict, ...]:
    try:
        import skimage  # noqa: F401
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise MissingDependencyError("scikit-image", "builtin:photos") from err

    rows: list[dict] = []
    by_name: dict[str, tuple[int, bytes, _Picture]] = {}
    for group, pic in enumerate(_PICTURES):
        data = _encode(_picture_image(pic), pic.fmt)
        by_name[pic.name] = (group, data, pic)
        rows.append(_row(data, pic.caption, group, "original", pic.caption_kind, pic.name))
    for name, transform, caption in _COPIES:
        group, data, pic = by_name[name]
        kind = "same" if caption is None else "different"
        text = pic.caption if caption is None else caption
        rows.append(_row(_copy_bytes(data, pic.fmt, transform), text, group, transform, kind, name))
    rows.extend(_bad_rows())
    return tuple(rows)


def _photos_dataset() -> datasets.Dataset:
    from datasets import Dataset, Features, Image, Value

    rows = _photos_rows()
    features = Features(
        {
            "image": Image(decode=False),
            "text": Value("string"),
            "gt_group": Value("int64"),
            "gt_transform": Value("string"),
            "gt_caption": Value("string"),
            "gt_name": Value("string"),
        }
    )
    columns = {key: [r[key] for r in rows] for key in features}
    columns["image"] = [{"bytes": b, "path": None} for b in columns["image"]]
    return Dataset.from_dict(columns, features=features)


# ------------------------------------------------------------------------------- digits_loop
#
# The protect loop's data: 40 distinct digits (scikit-learn rows 0..39, bicubic-upscaled to
# 32x32 grey PNGs so the planted transforms have pixels to work on), then 9 planted copies of 3
# of them (18 % of the 49 rows) made by the standard transforms (``curate.data.planting``),
# and 4 distinct digits that reuse another digit's caption word for word. Ground truth, as in
# ``photos``: ``gt_group`` (the distinct digit a row shows; copies share their original's),
# ``gt_transform`` (``original`` or the transform that made the copy), ``gt_caption``
# (``original`` | ``same``: a copy under its original's caption | ``reused``: a distinct digit
# under another digit's caption). ``digits_loop_heldout``: 256 other digits (rows 1000..1255),
# same format, never in the loop set: the reference for a Fréchet distance to unseen data.

LOOP_SIDE = 32
LOOP_ORIGINALS = 40
# (original's gt_group, transforms of its copies)
LOOP_COPIES: tuple[tuple[int, tuple[str, ...]], ...] = (
    (3, ("exact", "jpeg", "crop")),
    (17, ("resize", "rotate", "jpeg")),
    (29, ("exact", "crop", "rotate")),
)
LOOP_REUSED_CAPTIONS: tuple[tuple[int, int], ...] = ((5, 11), (8, 22), (13, 31), (26, 37))
LOOP_HELDOUT = (1000, 1256)


def _loop_digit(index: int) -> PILImage.Image:
    from PIL import Image

    img = Image.fromarray(_loop_pixels()[index], mode="L")
    return img.resize((LOOP_SIDE, LOOP_SIDE), Image.Resampling.BICUBIC)


@lru_cache(maxsize=1)
def _loop_pixels() -> np.ndarray:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _loop_rows() -> tuple[dict, ...]:
    from sklearn.datasets import load_digits

    from curate.data.planting import TRANSFORMS
    from curate.seeding import rng_for

    labels = load_digits().target
    captions = [
        f"a handwritten digit {_DIGIT_WORDS[int(labels[i])]}, sample {i}"
        for i in range(LOOP_ORIGINALS)
    ]
    kinds = ["original"] * LOOP_ORIGINALS
    for target, source in LOOP_REUSED_CAPTIONS:
        captions[target], kinds[target] = captions[source], "reused"
    originals = [_loop_digit(i) for i in range(LOOP_ORIGINALS)]
    rows = [
        {"image": _png(img), "text": cap, "label": int(labels[i]), "gt_group": i,
         "gt_transform": "original", "gt_caption": kind}
        for i, (img, cap, kind) in enumerate(zip(originals, captions, kinds, strict=True))
    ]  # fmt: skip
    for group, transforms in LOOP_COPIES:
        for name in transforms:
            copy = TRANSFORMS[name](originals[group], rng_for("builtin:digits_loop", group, name))
            rows.append(
                {"image": _png(copy.convert("L")), "text": captions[group],
                 "label": int(labels[group]), "gt_group": group, "gt_transform": name,
                 "gt_caption": "same"}
            )  # fmt: skip
    return tuple(rows)


def _loop_features():
    from datasets import ClassLabel, Features, Image, Value

    return Features(
        {
            "image": Image(),
            "text": Value("string"),
            "label": ClassLabel(names=list(_DIGIT_WORDS)),
            "gt_group": Value("int64"),
            "gt_transform": Value("string"),
            "gt_caption": Value("string"),
        }
    )


def _loop_dataset() -> datasets.Dataset:
    from datasets import Dataset

    rows = _loop_rows()
    features = _loop_features()
    columns = {key: [r[key] for r in rows] for key in features}
    columns["image"] = [{"bytes": b, "path": None} for b in columns["image"]]
    return Dataset.from_dict(columns, features=features)


def _loop_heldout_dataset() -> datasets.Dataset:
    from datasets import Dataset
    from sklearn.datasets import load_digits

    labels = load_digits().target
    lo, hi = LOOP_HELDOUT
    columns = {
        "image": [{"bytes": _png(_loop_digit(i)), "path": None} for i in range(lo, hi)],
        "text": [f"a handwritten digit {_DIGIT_WORDS[int(labels[i])]}" for i in range(lo, hi)],
        "label": [int(labels[i]) for i in range(lo, hi)],
        "gt_group": [-1] * (hi - lo),
        "gt_transform": ["heldout"] * (hi - lo),
        "gt_caption": ["original"] * (hi - lo),
    }
    return Dataset.from_dict(columns, features=_loop_features())
