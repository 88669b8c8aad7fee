"""Recall of the clustered near-duplicate search (SemDeDup-style: spherical k-means, exact
cosine inside each cluster; ``curate.dedup.tiers.semdedup_pairs``) against brute force.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python scripts/bench_clustered.py --rows 100000 --out reports/scale

The embeddings are synthetic unit vectors (``--dim`` 512) shaped like an image-embedding space:

* background: rows around ``--topics`` topic centres of Pareto-distributed sizes, each topic
  with its own spread (a row's cosine to its topic 0.5-0.8, so two rows of one topic sit at
  cosine ~0.25-0.65): k-means has real, uneven structure to find;
* planted near duplicates: groups of 2-8 rows around a centre drawn like a background row,
  each group at its own pair cosine drawn from 0.85-0.99 (a member is
  ``sqrt(t) * centre + sqrt(1 - t) * noise``, so two members meet at about ``t``).

Brute force is every pair with cosine >= ``--threshold`` (faiss ``IndexFlatIP`` range search in
chunks of queries, sims re-checked in float32 as the clustered path computes them). The
clustered path runs at each ``--clusters`` count and each ``--probe`` (each row in the clusters
of its ``probe`` nearest centroids). Each run is its own process, so its peak RSS
(``VmHWM``) is its own; the pairs are written to the work folder and compared in the parent:

* pair recall: brute-force pairs the clustered path found;
* component recall: brute-force pairs whose two rows end in one connected component of the
  clustered edges (what the duplicate grouping, a union-find over the edges, sees);
* extra pairs: clustered pairs brute force does not have (float32 ties at the threshold only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import peak_rss_mb  # scripts/_memory.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _around(rng, centre: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """Unit vectors at cosine ``cos`` (per row) to their ``centre`` row, random otherwise."""
    noise = rng.standard_normal(centre.shape).astype(np.float32)
    noise -= np.sum(noise * centre, axis=1, keepdims=True) * centre  # orthogonal to the centre
    noise = _unit(noise)
    cos = cos[:, None].astype(np.float32)
    return _unit(cos * centre + np.sqrt(1.0 - cos**2) * noise)


def synthetic(rows: int, dim: int, topics: int, dup_fraction: float, seed: int) -> dict:
    """Embeddings (rows, dim) float32, with each planted group's rows and pair cosine."""
    rng = np.random.default_rng(seed)
    topic = _unit(rng.standard_normal((topics, dim)))
    weight = rng.pareto(1.5, topics) + 1.0
    spread = rng.uniform(0.5, 0.8, topics)  # a row's cosine to its topic centre

    def background(m: int) -> np.ndarray:
        t = rng.choice(topics, m, p=weight / weight.sum())
        return _around(rng, topic[t], spread[t])

    sizes = []
    while sum(sizes) < rows * dup_fraction:
        sizes.append(int(rng.integers(2, 9)))
    planted = sum(sizes)
    centre = background(len(sizes))
    level = rng.uniform(0.85, 0.99, len(sizes))  # each group's pair cosine
    group = np.repeat(np.arange(len(sizes)), sizes)
    members = _around(rng, centre[group], np.sqrt(level[group]))
    x = np.concatenate([members, background(rows - planted)])
    order = rng.permutation(rows)  # planted rows anywhere in the table
    x, where = x[order], np.argsort(order)
    return {"x": x, "group_rows": where[:planted], "group": group, "level": level,
            "sizes": sizes}  # fmt: skip


# -- the phases (each in its own process) ----------------------------------------------------
def _save_pairs(path: Path, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> None:
    np.savez(path, i=i.astype(np.int64), j=j.astype(np.int64), sim=sim.astype(np.float32))


def phase_brute(args) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    x = np.load(Path(args.work) / "x.npy")
    start = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    found_i, found_j, found_s = [], [], []
    radius = args.threshold - 1e-4  # a margin: the exact float32 cosine decides below
    for lo in range(0, len(x), args.chunk):
        q = x[lo : lo + args.chunk]
        lims, _, idx = index.range_search(q, radius)
        rows = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64))) + lo
        keep = idx > rows  # each pair once, no self pairs
        a, b = rows[keep], idx[keep]
        s = np.einsum("nd,nd->n", x[a], x[b])
        ok = s >= args.threshold
        found_i.append(a[ok])
        found_j.append(b[ok])
        found_s.append(s[ok])
    i, j, s = (np.concatenate(v) for v in (found_i, found_j, found_s))
    seconds = time.perf_counter() - start
    _save_pairs(Path(args.work) / "brute.npz", i, j, s)
    return {"phase": "brute", "seconds": round(seconds, 2), "pairs": int(len(i)),
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


def phase_clustered(args) -> dict:
    import faiss

    from curate.dedup.tiers import semdedup_pairs

    faiss.omp_set_num_threads(1)
    x = np.load(Path(args.work) / "x.npy")
    start = time.perf_counter()
    edges = semdedup_pairs(x, args.threshold, args.clusters, seed=args.seed, probe=args.probe)
    seconds = time.perf_counter() - start
    _save_pairs(Path(args.work) / f"c{args.clusters}-p{args.probe}.npz", edges.i, edges.j,
                edges.sim)  # fmt: skip
    return {"phase": "clustered", "clusters": args.clusters, "probe": args.probe,
            "seconds": round(seconds, 2), "pairs": len(edges),
            "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip


def _run(args, phase: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--work", args.work,
           "--threshold", str(args.threshold), "--seed", str(args.seed),
           "--chunk", str(args.chunk)]  # fmt: skip
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- comparison --------------------------------------------------------------------------------
def _keys(pairs, n: int) -> np.ndarray:
    return np.sort(pairs["i"] * n + pairs["j"])


def compare(brute, found, n: int, threshold: float) -> dict:
    """Pair recall, component recall, extra pairs; pair recall per cosine band."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    b, f = _keys(brute, n), _keys(found, n)
    hit = np.isin(b, f, assume_unique=True)
    graph = coo_matrix((np.ones(len(found["i"])), (found["i"], found["j"])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(brute["i"] * n + brute["j"])
    same = label[brute["i"][order]] == label[brute["j"][order]]
    sims = brute["sim"][order]
    bands = {}
    edges = [threshold, *[e for e in (0.92, 0.95, 0.98) if e > threshold], 1.0 + 1e-6]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (sims >= lo) & (sims < hi)
        if m.any():
            bands[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = round(float(hit[m].mean()), 4)
    return {
        "pair_recall": round(float(hit.mean()), 4) if len(b) else 1.0,
        "component_recall": round(float(same.mean()), 4) if len(b) else 1.0,
        "missed_pairs": int((~hit).sum()),
        "extra_pairs": int((~np.isin(f, b, assume_unique=True)).sum()),
        "pair_recall_by_cosine": bands,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--topics", default="1000,100", help="topic counts, one set each")
    ap.add_argument("--dup-fraction", type=float, default=0.2)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--clusters", default="100,316,1000")
    ap.add_argument("--probe", default="1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "brute":
        print(json.dumps(phase_brute(args)))
        return
    if args.phase == "clustered":
        args.clusters, args.probe = int(args.clusters), int(args.probe)
        print(json.dumps(phase_clustered(args)))
        return

    clusters = [int(c) for c in args.clusters.split(",")]
    probes = [int(p) for p in args.probe.split(",")]
    datasets = [dataset(args, int(t), clusters, probes) for t in args.topics.split(",")]
    result = {
        "rows": args.rows,
        "dim": args.dim,
        "threshold": args.threshold,
        "seed": args.seed,
        "default_clusters": int(np.sqrt(args.rows)),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "datasets": datasets,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "clustered.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "clustered.md").write_text(render(result, args))
    print(json.dumps(result, indent=2))


def dataset(args, topics: int, clusters: list[int], probes: list[int]) -> dict:
    """One synthetic set: brute force, then the clustered path at each count and probe."""
    with tempfile.TemporaryDirectory(prefix="bench-clustered-") as work:
        args.work = work
        start = time.perf_counter()
        data = synthetic(args.rows, args.dim, topics, args.dup_fraction, args.seed)
        np.save(Path(work) / "x.npy", data["x"])
        gen_s = time.perf_counter() - start
        brute = _run(args, "brute")
        print(json.dumps({"topics": topics, **brute}), flush=True)
        ref = dict(np.load(Path(work) / "brute.npz"))
        # the planted group of each row (-1: background), to tell planted pairs from others
        gid = np.full(args.rows, -1, np.int64)
        gid[data["group_rows"]] = data["group"]
        planted = (gid[ref["i"]] >= 0) & (gid[ref["i"]] == gid[ref["j"]])
        runs = []
        for k in clusters:
            for p in probes:
                r = _run(args, "clustered", clusters=k, probe=p)
                found = dict(np.load(Path(work) / f"c{k}-p{p}.npz"))
                r.update(compare(ref, found, args.rows, args.threshold))
                print(json.dumps({"topics": topics, **r}), flush=True)
                runs.append(r)
    sizes = np.asarray(data["sizes"])
    return {
        "topics": topics,
        "planted_groups": int(len(sizes)),
        "planted_rows": int(sizes.sum()),
        "planted_pairs": int((sizes * (sizes - 1) // 2).sum()),
        "generate_s": round(gen_s, 2),
        "brute": {
            **brute,
            "planted_pairs_found": int(planted.sum()),
            "other_pairs": int((~planted).sum()),
        },  # fmt: skip
        "clustered": runs,
    }


def render(d: dict, args) -> str:
    cmd = ("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python "
           f"scripts/bench_clustered.py --rows {d['rows']} --topics {args.topics} "
           f"--threshold {d['threshold']} --clusters {args.clusters} --probe {args.probe} "
           "--out reports/scale")  # fmt: skip
    sections = []
    for ds in d["datasets"]:
        b = ds["brute"]
        rows = "\n".join(
            f"| {r['clusters']}{' (default)' if r['clusters'] == d['default_clusters'] else ''} "
            f"| {r['probe']} | {r['pair_recall']:.4f} | {r['component_recall']:.4f} "
            f"| {r['missed_pairs']:,} | {r['extra_pairs']} | {r['seconds']} | {r['peak_rss_mb']} "
            f"| {' / '.join(f'{v:.4f}' for v in r['pair_recall_by_cosine'].values())} |"
            for r in ds["clustered"]
        )
        bands = " / ".join(ds["clustered"][0]["pair_recall_by_cosine"]) if ds["clustered"] else ""
        sections.append(f"""## {ds["topics"]} topics

{ds["planted_groups"]:,} planted groups ({ds["planted_rows"]:,} rows, {ds["planted_pairs"]:,}
pairs before the threshold). Brute force: {b["pairs"]:,} pairs at cosine >= {d["threshold"]}
({b["planted_pairs_found"]:,} inside planted groups, {b["other_pairs"]:,} others) in
{b["seconds"]} s, peak RSS {b["peak_rss_mb"]} MB.

| clusters | probe | pair recall | component recall | missed pairs | extra pairs | seconds | peak RSS MB | pair recall at cosine {bands} |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
""")
    body = "\n".join(sections)
    return f"""# Clustered near-duplicate search vs brute force

Command: `{cmd}` (2 shared cores, one thread per library; every search in its own process,
peak RSS its `VmHWM`; the machine was shared with other jobs, so seconds are noisy, the ratios
within one table less so).

{d["rows"]:,} synthetic unit embeddings, {d["dim"]}-d: background rows around a number of
topics (uneven sizes, each its own spread: a row's cosine to its topic 0.5-0.8), and planted
groups of 2-8 rows covering 20 % of the rows, each group at a pair cosine drawn from
0.85-0.99 around a centre drawn like a background row. Brute force: faiss `IndexFlatIP` range
search in chunks of {args.chunk} queries, every pair at cosine >= {d["threshold"]}.

Clustered path: `curate.dedup.tiers.semdedup_pairs` (spherical k-means with faiss, 20
iterations; exact cosine inside each cluster); `probe`: each row in the clusters of its
`probe` nearest centroids. Pair recall: the brute-force pairs it found. Component recall:
brute-force pairs whose rows end in one connected component of its edges (the duplicate
grouping is a union-find over the edges, so a missed pair whose rows are linked through other
pairs of their group is not lost). Extra pairs: pairs brute force does not have. The `clip`
tier uses sqrt(rows) clusters, {d["default_clusters"]} here, and probe 1.

{body}"""


if __name__ == "__main__":
    main()
