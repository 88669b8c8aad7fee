"""A generated corpus of hostile but ordinary inputs, in six source formats.

``build_corpus(root)`` writes, under ``root``:

- ``private/secret.png``: a file outside every dataset folder; rows point at it with ``../`` and
  absolute paths (and a symlink), and its pixels must never reach an export;
- ``jsonl/``, ``csv/``, ``parquet/``: one data file beside an ``images/`` folder, the image column
  holding paths;
- ``imagefolder/``: images plus a ``metadata.jsonl`` (``file_name``), with two unlisted images;
- ``disk/``: a ``save_to_disk`` folder whose image column is a ``{bytes, path}`` struct;
- ``shards/``: a folder of two parquet shards with the same struct column.

Every row carries a unique ``key`` column (it becomes ``src_key`` in the run table) so a test
can find each row's outcome, and an ``id`` column (``--id-column id``). Each row's expected
outcome is a set of allowed reason codes (``"ok"`` for a kept row), ``REJECTED`` (rejected with
any code) or ``ANY`` (either, but accounted for). Lines that cannot be parsed at all (jsonl /
csv ``bad_line``) have no key; their number is in ``Source.bad_lines``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OK = "ok"
ANY = frozenset({"*"})  # any outcome (kept or rejected), as long as it is accounted for
REJECTED = frozenset({"!"})  # rejected, with any reason code
FORMATS = ("jsonl", "csv", "parquet", "imagefolder", "disk", "shards")
#: Formats whose image column holds ``{bytes, path}`` structs (image kinds inline as bytes).
STRUCT_FORMATS = ("disk", "shards")
LINE_FORMATS = ("jsonl", "csv", "imagefolder")  # formats with lines that can be malformed


@dataclass
class Row:
    key: str
    kind: str  # what is odd about it, for reports
    id: str | None
    caption: object
    image: (
        str | bytes | None
    )  # a path string, or bytes (inline in struct formats; a file otherwise)
    expect: frozenset
    formats: tuple[str, ...] = FORMATS


@dataclass
class Source:
    fmt: str
    dataset: Path  # what --dataset gets
    folder: Path  # the dataset's own folder (hash it before/after to prove it is untouched)
    rows: list[Row]
    bad_lines: int = 0  # unparseable lines: rejected rows with reason bad_line and no key
    unlisted: int = 0  # imagefolder images not in metadata.jsonl

    @property
    def rows_in(self) -> int:
        return len(self.rows) + self.bad_lines

    def mismatches(self, table) -> list[str]:
        """Rows of a run table (``src_key``, ``reason``) whose outcome is not the expected one."""
        import re

        def code(reason):
            if reason is None:
                return OK
            m = re.match(r"[a-z][a-z0-9_]*", reason.strip())
            return m.group(0) if m else reason

        if "src_key" not in table.columns:
            return ["the table has no src_key column"]
        got = {k: code(r) for k, r in zip(table["src_key"], table["reason"], strict=True) if k}
        wrong = []
        for row in self.rows:
            if row.key not in got:
                wrong.append(f"{row.kind}: row missing from the table")
                continue
            c = got[row.key]
            if row.expect == ANY:
                continue
            if row.expect == REJECTED:
                if c == OK:
                    wrong.append(f"{row.kind}: kept, expected a rejection")
            elif c not in row.expect:
                wrong.append(f"{row.kind}: {c}, expected {'/'.join(sorted(row.expect))}")
        if self.fmt in LINE_FORMATS:
            unkeyed = [
                code(r) for k, r in zip(table["src_key"], table["reason"], strict=True) if not k
            ]
            if unkeyed.count("bad_line") < self.bad_lines:
                wrong.append(f"bad_line: {unkeyed.count('bad_line')} of {self.bad_lines} bad lines")
        return wrong

    def kept_range(self) -> tuple[int, int]:
        """The fewest and most rows that can be kept, given the ANY rows."""
        sure = sum(1 for r in self.rows if r.expect == frozenset({OK}))
        maybe = sum(
            1 for r in self.rows if r.expect == ANY or (OK in r.expect and len(r.expect) > 1)
        )
        return sure, sure + maybe


@dataclass
class Corpus:
    root: Path
    private: Path
    private_pixels: str  # pixel_digest() of the private image
    sources: dict[str, Source] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(s.rows_in for s in self.sources.values())

    def expected_counts(self) -> dict[str, int]:
        return {fmt: s.rows_in for fmt, s in self.sources.items()}


# -- images ---------------------------------------------------------------------------------
def pixel_digest(data: bytes) -> str | None:
    """A hash of the decoded RGB pixels of ``data`` (None if it does not decode)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except Exception:
        return None
    return hashlib.blake2b(f"{rgb.size}".encode() + rgb.tobytes(), digest_size=16).hexdigest()


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(rng: np.random.Generator, w: int = 8, h: int = 8):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG whose header declares ``width x height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def gif_bomb() -> bytes:
    """A tiny GIF declaring a 65535 x 65535 screen and frame."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
        + b"\x02\x02\x44\x01\x00;"
    )


def _image_kinds(rng: np.random.Generator) -> list[tuple[str, bytes, frozenset]]:
    """(kind, file bytes, expected codes) for every image oddity."""
    from PIL import Image

    def ok(kind, data):
        return (kind, data, frozenset({OK}))

    grey16 = Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))
    pal = _rgb(rng).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    la = Image.fromarray(rng.integers(0, 256, (8, 8, 2), dtype=np.uint8), "LA")
    rgba = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA")
    cmyk = Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    big = _rgb(rng, 48, 48)
    good_png = _encode(big, "PNG")
    good_jpeg = _encode(_rgb(rng, 48, 48), "JPEG", quality=90)
    corrupt = bytearray(_encode(_rgb(rng, 48, 48), "PNG"))
    corrupt[60:90] = bytes(30)  # zeroes inside IDAT: CRC / zlib errors
    bad = frozenset({"truncated", "undecodable"})
    return [
        ok("png_rgb", _encode(_rgb(rng), "PNG")),
        ok("jpeg_rgb", _encode(_rgb(rng), "JPEG")),
        ok("webp_rgb", _encode(_rgb(rng), "WEBP", lossless=True)),
        ok("bmp_rgb", _encode(_rgb(rng), "BMP")),
        ok("mode_P", _encode(pal, "PNG")),
        ok("mode_P_transparency", _encode(pal, "PNG", transparency=0)),
        ok("mode_LA", _encode(la, "PNG")),
        ok("mode_RGBA", _encode(rgba, "PNG")),
        ok("mode_I16", _encode(grey16, "PNG")),
        ok("mode_I16_tiff", _encode(grey16, "TIFF")),
        ok("mode_CMYK", _encode(cmyk, "JPEG")),
        ok("mode_1", _encode(_rgb(rng).convert("1"), "PNG")),
        ok("mode_L", _encode(_rgb(rng).convert("L"), "PNG")),
        ok("exif_rotated", _encode(_rgb(rng, 8, 4), "JPEG", exif=exif)),
        ok("one_pixel", _encode(_rgb(rng, 1, 1), "PNG")),
        ok("thin_1x64", _encode(_rgb(rng, 1, 64), "PNG")),
        ("zero_bytes", b"", frozenset({"empty_image"})),
        ("not_an_image", b"this is not an image, just text\n" * 3, frozenset({"undecodable"})),
        ("html_as_png", b"<html><script>alert(1)</script></html>", frozenset({"undecodable"})),
        ("truncated_png", good_png[: len(good_png) // 2], bad),
        ("truncated_jpeg", good_jpeg[: len(good_jpeg) // 2], bad),
        ("corrupt_png", bytes(corrupt), bad),
        ("bomb_png", png_bomb(), frozenset({"too_many_pixels"})),
        ("bomb_gif", gif_bomb(), frozenset({"too_many_pixels"})),
    ]


CAPTION_KINDS: list[tuple[str, object, frozenset, tuple[str, ...]]] = [
    # (kind, caption value, expected, formats)
    ("caption_empty", "", frozenset({"empty_caption", "missing_caption"}), FORMATS),
    ("caption_whitespace", "  \t  ", frozenset({"empty_caption", "missing_caption"}), FORMATS),
    ("caption_null", None, frozenset({"empty_caption", "missing_caption"}), FORMATS),
    ("caption_NaN", "NaN", frozenset({OK}), FORMATS),
    ("caption_null_word", "null", frozenset({OK}), FORMATS),
    ("caption_None_word", "None", frozenset({OK}), FORMATS),
    ("caption_NA", "N/A", frozenset({OK}), FORMATS),
    ("caption_number", "123", frozenset({OK}), FORMATS),
    ("caption_float", "0.5", frozenset({OK}), FORMATS),
    ("caption_true", "true", frozenset({OK}), FORMATS),
    (
        "caption_html",
        "<script>alert('x')</script><img src=x onerror=alert(1)>",
        frozenset({OK}),
        FORMATS,
    ),
    ("caption_long", "a very long caption " * 600, frozenset({OK}), FORMATS),
    ("caption_rtl", "قطة على السطح \u202etxt.exe", frozenset({OK}), FORMATS),
    ("caption_emoji", "🐈\u200d⬛ a black cat 🎉", frozenset({OK}), FORMATS),
    ("caption_newline", "first line\nsecond line", frozenset({OK}), FORMATS),
    ("caption_formula", '=HYPERLINK("http://x","y")', frozenset({OK}), FORMATS),
    ("caption_nul", "a cat\x00with a NUL", ANY, FORMATS),
    ("caption_json_number", 123, ANY, ("jsonl", "imagefolder")),
    ("caption_list", ["a cat", "a small cat"], frozenset({OK}), ("jsonl", "imagefolder")),
]

# (kind, id, expected) rows with a good image; ids collide on purpose
ID_KINDS: list[tuple[str, str, frozenset]] = [
    ("id_a", "a", frozenset({OK})),
    ("id_a_again", "a", frozenset({"duplicate_id"})),
    ("id_a_suffix", "a~1", frozenset({OK})),
    ("id_dup", "dup", frozenset({OK})),
    ("id_dup_again", "dup", frozenset({"duplicate_id"})),
    ("id_007", "007", frozenset({OK})),
    ("id_7", "7", frozenset({OK})),
    ("id_7.0", "7.0", frozenset({OK})),
    ("id_unicode", "ключ-🔑", frozenset({OK})),
]


def _path_kinds(folder: Path, private: Path) -> list[tuple[str, str | None, frozenset]]:
    """(kind, path string, expected) for every path oddity, relative to ``folder``."""
    rel_private = os.path.relpath(private, folder)
    deep = "images/" + "/".join(["d" * 200] * 25) + "/x.png"  # > PATH_MAX (4096)
    return [
        ("path_dotdot", rel_private, frozenset({"outside_dataset"})),
        ("path_dotdot_inner", "images/../" + rel_private, frozenset({"outside_dataset"})),
        ("path_absolute_outside", str(private), frozenset({"outside_dataset"})),
        ("path_symlink_outside", "images/link_to_private.png", frozenset({"outside_dataset"})),
        ("path_dev_zero", "/dev/zero", frozenset({"outside_dataset"})),
        ("path_etc_passwd", "/etc/passwd", frozenset({"outside_dataset"})),
        ("path_absolute_inside", str(folder / "images" / "inside.png"), frozenset({OK})),
        ("path_dot_slash", "./images/dotslash.png", frozenset({OK})),
        ("path_unicode", "images/ünï cødé 猫.png", frozenset({OK})),
        ("path_too_long_name", "images/" + "x" * 300 + ".png", frozenset({"path_too_long"})),
        ("path_too_long_total", deep, frozenset({"path_too_long"})),
        # URLs are fetched; port 9 on loopback refuses at once (no network needed)
        ("path_http", "http://127.0.0.1:9/cat.png", frozenset({"connection_error"})),
        ("path_https", "https://127.0.0.1:9/a/b.jpg?x=1", frozenset({"connection_error"})),
        ("path_s3", "s3://bucket/key.png", frozenset({"unsupported_url", "url_not_fetched"})),
        ("path_directory", "images", frozenset({"not_a_file"})),
        ("path_directory_slash", "images/subdir/", frozenset({"not_a_file"})),
        ("path_missing", "images/does_not_exist.png", frozenset({"missing_file"})),
        ("path_empty", "", frozenset({"empty_image", "missing_file"})),
        ("path_nul_byte", "images/inside.png\x00.txt", REJECTED),
        ("path_file_url", "file://" + str(private), REJECTED),
    ]


# -- writers --------------------------------------------------------------------------------
def _bad_jsonl_lines() -> list[bytes]:
    return [
        b'{"id": "broken", "image": "images/x.png", "text": ',  # malformed JSON
        b'{"id": "bad-utf8-\xff\xfe", "image": "images/x.png", "text": "caf\xe9"}',  # invalid UTF-8
        b'{"id": "surrogate", "image": "images/x.png", "text": "\\ud800 lone"}',  # lone surrogate
        b"[1, 2, 3]",  # valid JSON, not an object
    ]


def _bad_csv_lines() -> list[bytes]:
    return [
        b"ragged,images/x.png,too,many,fields,here\r\n",
        b"bad-utf8,images/x.png,caf\xe9 \xff\r\n",
    ]


def _write_jsonl(path: Path, records: list[dict], bad: list[bytes], rng: random.Random) -> None:
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
    for b in bad:  # spread the bad lines through the file
        lines.insert(rng.randrange(1, len(lines)), b)
    path.write_bytes(b"\n".join(lines) + b"\n")


def _write_csv(path: Path, records: list[dict], bad: list[bytes], rng: random.Random) -> None:
    cols = ["key", "id", "image", "text"]
    chunks = []
    for r in records:
        buf = io.StringIO()
        csv.writer(buf).writerow(["" if r.get(c) is None else r[c] for c in cols])
        chunks.append(buf.getvalue().encode("utf-8"))
    for b in bad:
        chunks.insert(rng.randrange(1, len(chunks)), b)
    path.write_bytes(",".join(cols).encode() + b"\r\n" + b"".join(chunks))


def _struct_table(records: list[dict]):
    import pyarrow as pa

    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("key", pa.string()), ("id", pa.string()), ("image", img), ("text", pa.string())]
    )
    return pa.Table.from_pylist(records, schema=schema)


def _materialise_images(folder: Path, private: Path) -> None:
    """The files the path rows point at: inside the dataset, a subfolder, a symlink out."""
    images = folder / "images"
    (images / "subdir").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(folder.name.encode()))
    for name in ("inside.png", "dotslash.png", "ünï cødé 猫.png"):
        (images / name).write_bytes(_encode(_rgb(rng), "PNG"))
    link = images / "link_to_private.png"
    if not link.exists():
        link.symlink_to(private)


def _rows_for(fmt: str, folder: Path, private: Path, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    rows: list[Row] = []
    n = 0

    def add(kind, rid, caption, image, expect, formats=FORMATS):
        nonlocal n
        if fmt not in formats:
            return
        rows.append(Row(f"{fmt}-{n:03d}-{kind}", kind, rid, caption, image, expect, formats))
        n += 1

    for kind, data, expect in _image_kinds(rng):
        add(kind, f"r{n:03d}", f"a picture for {kind}", data, expect)
    for kind, cap, expect, formats in CAPTION_KINDS:
        add(kind, f"r{n:03d}", cap, _encode(_rgb(rng), "PNG"), expect, formats)
    for kind, rid, expect in ID_KINDS:
        add(kind, rid, f"a picture with id {rid}", _encode(_rgb(rng), "PNG"), expect)
    for kind, path, expect in _path_kinds(folder, private):
        add(kind, f"r{n:03d}", f"a picture at {kind}", path, expect)
    add("image_null", f"r{n:03d}", "a row without an image", None, REJECTED)
    return rows


def _image_ref(fmt: str, folder: Path, row: Row):
    """The image cell of ``row`` in ``fmt`` (writing the file where the format needs one)."""
    if isinstance(row.image, bytes):
        if fmt in STRUCT_FORMATS:
            return {"bytes": row.image, "path": None}
        ext = {"jpeg": "jpg", "webp": "webp", "bmp": "bmp", "tiff": "tif", "gif": "gif"}
        suffix = next((v for k, v in ext.items() if k in row.kind), "png")
        rel = f"images/{row.key}.{suffix}"
        (folder / rel).write_bytes(row.image)
        return rel
    if fmt in STRUCT_FORMATS:
        return None if row.image is None else {"bytes": None, "path": row.image}
    return row.image


def build_source(fmt: str, root: Path, private: Path, seed: int = 0) -> Source:
    folder = root / fmt
    folder.mkdir(parents=True)
    rows = _rows_for(fmt, folder, private, seed)
    pyrng = random.Random(seed)
    bad = 0
    if fmt == "disk":
        records = [
            {"key": r.key, "id": r.id, "image": _image_ref(fmt, folder, r), "text": r.caption}
            for r in rows
        ]
        from datasets import Dataset

        folder.rmdir()
        Dataset(_struct_table(records)).save_to_disk(str(folder))
        _materialise_images(folder, private)
        return Source(fmt, folder, folder, rows)
    _materialise_images(folder, private)
    records = []
    for r in rows:
        image = _image_ref(fmt, folder, r)
        key = "file_name" if fmt == "imagefolder" else "image"
        records.append({"key": r.key, "id": r.id, key: image, "text": r.caption})
    if fmt == "jsonl":
        dataset = folder / "data.jsonl"
        _write_jsonl(dataset, records, _bad_jsonl_lines(), pyrng)
        bad = len(_bad_jsonl_lines())
    elif fmt == "csv":
        dataset = folder / "data.csv"
        _write_csv(dataset, records, _bad_csv_lines(), pyrng)
        bad = len(_bad_csv_lines())
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        dataset = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(records), dataset)
    elif fmt == "shards":
        import pyarrow.parquet as pq

        dataset = folder
        half = len(records) // 2  # contiguous halves: the row order is the file order
        for i, part in enumerate((records[:half], records[half:])):
            pq.write_table(_struct_table(part), folder / f"part-{i:05d}.parquet")
    elif fmt == "imagefolder":
        dataset = folder
        _write_jsonl(folder / "metadata.jsonl", records, _bad_jsonl_lines(), pyrng)
        bad = len(_bad_jsonl_lines())
        rng = np.random.default_rng(seed + 99)
        for i in range(2):
            (folder / "images" / f"unlisted_{i}.png").write_bytes(_encode(_rgb(rng), "PNG"))
        return Source(fmt, dataset, folder, rows, bad_lines=bad, unlisted=2)
    else:  # pragma: no cover
        raise ValueError(fmt)
    return Source(fmt, dataset, folder, rows, bad_lines=bad)


def build_corpus(root: Path | str, formats: tuple[str, ...] = FORMATS, seed: int = 0) -> Corpus:
    """Write the corpus under ``root`` (which must not exist or be empty)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "private").mkdir()
    private = root / "private" / "secret.png"
    rng = np.random.default_rng(12345)
    secret = _rgb(rng, 24, 24)
    private.write_bytes(_encode(secret, "PNG"))
    corpus = Corpus(root, private, pixel_digest(private.read_bytes()))
    for i, fmt in enumerate(formats):
        corpus.sources[fmt] = build_source(fmt, root, private, seed=seed + i)
    return corpus


# -- small datasets for the identity / misuse tests -------------------------------------------
def write_simple_jsonl(
    folder: Path | str,
    n: int = 40,
    *,
    seed: int = 0,
    ids: list[str] | None = None,
    dup_images: int = 4,
    dup_rows: int = 1,
    name: str = "data.jsonl",
    shuffle: bool = False,
) -> Path:
    """A clean jsonl dataset of ``n`` tiny images with captions, beside its ``images/``.

    ``dup_images`` pairs share an image (different captions), ``dup_rows`` rows are exact copies
    of another (same image and caption), so dedup has something to do. With ``ids`` the rows get
    an ``id`` column. ``shuffle`` writes the same rows in another order (same images).
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        p = folder / "images" / f"{i:04d}.png"
        if not p.exists():
            p.write_bytes(_encode(_rgb(rng), "PNG"))
        records.append({"image": f"images/{i:04d}.png", "text": f"picture number {i} of a scene"})
    for j in range(min(dup_images, n // 2)):
        records[n // 2 + j]["image"] = records[j]["image"]
    for j in range(dup_rows):
        records[-1 - j] = dict(records[1 + j])
    if ids is not None:
        for r, rid in zip(records, ids, strict=False):
            r["id"] = rid
    if shuffle:
        random.Random(seed + 1).shuffle(records)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
