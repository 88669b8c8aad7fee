"""Perceptual hashes and the Hamming-radius search behind the phash/dhash tiers."""

from __future__ import annotations

import numpy as np
import pytest

from curate.dedup.hashing import codes_to_hex, dct_matrix, hamming, hex_to_codes, image_hashes
from curate.dedup.search import hamming_pairs


def test_dct_matrix_is_orthonormal():
    c = dct_matrix(32)
    np.testing.assert_allclose(c @ c.T, np.eye(32), atol=1e-5)


def test_phash_matches_imagehash_bit_for_bit(photos):
    # The resize box-averages before LANCZOS (reducing_gap 3): on these photos that changes no
    # bit of imagehash's full-LANCZOS pHash; on other images it can move a bit or two.
    imagehash = pytest.importorskip("imagehash")
    ours = image_hashes(photos, "phash")
    theirs = np.array([np.packbits(imagehash.phash(im).hash.ravel()) for im in photos])
    assert (hamming(ours, theirs) == 0).all()


@pytest.mark.parametrize("kind", ["phash", "dhash"])
def test_planted_copies_are_close_and_distinct_photos_far(planted, kind):
    images, truth, kinds = planted
    codes, mirrored = image_hashes(images, kind, mirrored=True)
    assert codes.shape == (len(images), 8) and codes.dtype == np.uint8
    orig = {t: i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"}
    for i, (t, k) in enumerate(zip(truth, kinds, strict=True)):
        if k in ("exact", "jpeg", "resize"):
            assert hamming(codes[i], codes[orig[t]]) <= 6, (k, t)
        if k == "flip":
            # The mirrored hash of the copy equals the original's hash: flips are found.
            assert hamming(mirrored[i], codes[orig[t]]) <= 6, t
    o = np.array(sorted(orig.values()))
    d = hamming(codes[o][:, None], codes[o][None])
    np.fill_diagonal(d, 64)
    assert d.min() > 12


def test_files_bytes_and_images_hash_alike_on_any_number_of_threads(photos, tmp_path):
    import io

    from PIL import Image

    images = [im.rotate(a) for a in (0, 90, 180) for im in photos]  # 24: several pool tasks
    paths, blobs = [], []
    for k, im in enumerate(images):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        blobs.append(buf.getvalue())
        paths.append(tmp_path / f"{k}.png")
        paths[-1].write_bytes(blobs[-1])
    lazy = [Image.open(p) for p in paths]  # not decoded yet: decoded on the pool
    for kind in ("phash", "dhash"):
        ref = image_hashes(images, kind, mirrored=True, workers=1)
        for source in (images, paths, [str(p) for p in paths], blobs, lazy):
            for workers in (1, 3):
                got = image_hashes(source, kind, mirrored=True, workers=workers)
                assert (got[0] == ref[0]).all() and (got[1] == ref[1]).all(), (kind, workers)


def test_jpeg_sources_decode_at_reduced_scale_close_to_full_decode(photos):
    import io

    from PIL import Image

    blobs = []
    for im in photos:
        buf = io.BytesIO()
        im.resize((1024, 1024)).save(buf, "JPEG", quality=90)
        blobs.append(buf.getvalue())
    full = image_hashes([Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], "phash")
    drafted = image_hashes(blobs, "phash")  # bytes: greyscale decode at 1/8 scale (128 px)
    assert hamming(full, drafted).max() <= 4


def test_hex_round_trip(photos):
    codes = image_hashes(photos, "dhash")
    assert (hex_to_codes(codes_to_hex(codes)) == codes).all()


def _random_codes(n: int, near: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    bits = np.unpackbits(base[:near], axis=1)
    for row in range(near):
        flip = rng.choice(64, size=int(rng.integers(0, 7)), replace=False)
        bits[row, flip] ^= 1
    return np.concatenate([base, np.packbits(bits, axis=1)])


@pytest.mark.parametrize("method", ["flat", "multihash"])
def test_faiss_radius_search_equals_brute_force(method):
    codes = _random_codes(3000, 300)
    ref = hamming_pairs(codes, 6, method="numpy")
    got = hamming_pairs(codes, 6, method=method)
    assert len(ref) >= 300  # every planted near copy
    assert set(got.pairs()) == set(ref.pairs())
    np.testing.assert_allclose(got.sim, ref.sim)


def test_radius_is_inclusive_and_mirrored_queries_find_the_pair():
    a = np.zeros((1, 8), np.uint8)
    b = a.copy()
    b[0, 0] = 0b0000_0111  # 3 bits apart
    codes = np.concatenate([a, b, np.full((1, 8), 255, np.uint8)])
    assert len(hamming_pairs(codes, 3)) == 1
    assert len(hamming_pairs(codes, 2)) == 0
    # A query code that is item 2's mirror, equal to item 0's hash, links items 2 and 0.
    queries = codes.copy()
    queries[2] = a[0]
    pairs = hamming_pairs(codes, 0, queries=queries)
    assert (pairs.i.tolist(), pairs.j.tolist()) == ([0], [2])
