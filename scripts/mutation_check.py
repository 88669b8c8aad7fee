"""Targeted mutations: break one documented behaviour at a time and check that a test fails.

Each mutation replaces one exact snippet of the library with a broken version, in a copy of
the tree (the working tree is never touched), and runs the tests that should protect that
behaviour. A mutation is *killed* when those tests fail, *survived* when they all pass; a
mutation whose snippet is no longer in the code is reported as *stale* (the list needs
updating, which is itself a finding). Writes ``reports/mutation.md`` and ``.json``.

    python scripts/mutation_check.py                    # every mutation
    python scripts/mutation_check.py --only trust       # mutations whose name starts with it
    python scripts/mutation_check.py --only train/ --only guidance/ --merge
                                                        # several prefixes; keep the other rows

Each row names the first test that failed. Interrupted (Ctrl-C, SIGTERM, SIGHUP), the script
restores the mutated file in the copy, kills the running pytest and removes the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


M = Mutation
MUTATIONS = [
    # -- trust: run folders, ids, paths (issue: never lose or touch a user's data) -----------
    M(
        "trust/claim accepts any folder",
        "curate/io/folders.py",
        "    if path.exists() and not _is_empty_dir(path):\n        raise UsageError(\n"
        '            f"{key}: {path}: the folder is not empty and was not made by curate; "\n'
        '            "choose a new or empty folder (curate never writes into or deletes your files)"',
        "    if False:\n        raise UsageError(\n"
        '            f"{key}: {path}: the folder is not empty and was not made by curate; "\n'
        '            "choose a new or empty folder (curate never writes into or deletes your files)"',
        ("tests/io/test_folders.py", "tests/io/test_ingest.py"),
    ),
    M(
        "trust/export replaces a user's folder",
        "curate/io/folders.py",
        "        if have is None:\n            raise UsageError(",
        "        if have is None and False:\n            raise UsageError(",
        ("tests/io/test_folders.py", "tests/test_export.py"),
    ),
    M(
        "trust/the lock holder deletes live writers' temporary files",
        "curate/io/folders.py",
        "            if pid is not None and _pid_alive(pid):\n                continue",
        "            if False:\n                continue",
        ("tests/io/test_folders.py",),
    ),
    M(
        "trust/no lock",
        "curate/io/folders.py",
        "            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)",
        "            pass",
        ("tests/io/test_folders.py",),
    ),
    M(
        "trust/torn marker crashes",
        "curate/io/folders.py",
        "    except (OSError, ValueError):\n        return None",
        "    except OSError:\n        return None",
        ("tests/io/test_folders.py",),
    ),
    M(
        "trust/positional ids",
        "curate/io/ingest.py",
        "        sid = raw_id if raw_id is not None else content_id(data, cell, raw_caption)",
        '        sid = raw_id if raw_id is not None else f"s{idx:08d}"',
        ("tests/io/test_ingest.py",),
    ),
    M(
        "trust/suffix ignores source ids",
        "curate/io/ingest.py",
        '        while f"{sid}~{k}" in self.used or f"{sid}~{k}" in self.reserved:',
        '        while f"{sid}~{k}" in self.used and False:',
        ("tests/io/test_ingest.py",),
    ),
    M(
        "trust/re-ingest without --overwrite",
        "curate/io/ingest.py",
        'old.get("fingerprint") != config.fingerprint() and not overwrite:',
        'old.get("fingerprint") != config.fingerprint() and False:',
        ("tests/io/test_ingest.py",),
    ),
    M(
        "trust/unsafe yaml",
        "curate/recipe.py",
        '        raw = yaml.safe_load(path.read_text(encoding="utf-8"))',
        '        raw = yaml.unsafe_load(path.read_text(encoding="utf-8"))',
        ("tests/test_recipe.py", "tests/test_cli.py"),
    ),
    M(
        "trust/regex checked only at run time",
        "curate/steps/validate.py",
        '        pl.Series([""], dtype=pl.String).str.contains(pattern)',
        "        pass",
        ("tests/test_recipe.py", "tests/steps"),
    ),
    # -- table, selection, export ------------------------------------------------------------
    M(
        "table/last removal reason wins",
        "curate/table.py",
        "    for col in drop_columns(table):",
        "    for col in reversed(drop_columns(table)):",
        ("tests/test_export.py", "tests/test_runner.py"),
    ),
    M(
        "table/null select rule removes",
        "curate/steps/select.py",
        "        drop = remove.fill_null(False) & ok",
        "        drop = remove.fill_null(True) & ok",
        ("tests/steps", "tests/test_runner.py"),
    ),
    M(
        "export/card misses ingest rejections",
        "curate/table.py",
        '        removal_frame(table)\n        .filter(~pl.col("keep"))\n        .with_columns(',
        '        removal_frame(table)\n        .filter(~pl.col("keep") & (pl.col("removed_by") != "ingest"))\n        .with_columns(',
        ("tests/test_export.py",),
    ),
    M(
        "export/changed count zeroed",
        "curate/export.py",
        "    changed = changes_manifest(table).height",
        "    changed = 0",
        ("tests/test_export.py",),
    ),
    M(
        "export/merged captions beat rewritten ones",
        "curate/table.py",
        '    if "caption_new" in table.columns:\n        new = pl.col("caption_new")',
        '    if "caption_new" in table.columns and False:\n        new = pl.col("caption_new")',
        ("tests/test_export.py", "tests/captions"),
    ),
    M(
        "runner/fingerprint ignores upstream",
        "curate/runner.py",
        "    return _hash(upstream, step.name, step.cache_config(), seed)",
        "    return _hash(step.name, step.cache_config(), seed)",
        ("tests/test_runner.py",),
    ),
    M(
        "store/rows in storage order",
        "curate/io/store.py",
        "        rows = self._images.take(self.rows(sample_ids))",
        "        rows = self._images.take(sorted(self.rows(sample_ids)))",
        ("tests/io", "tests/train/test_loop.py", "tests/audit"),
    ),
    M(
        "table/parts read out of manifest order",
        "curate/table.py",
        '    return pl.scan_parquet([folder / p for p in meta["parts"]], hive_partitioning=False)',
        '    return pl.scan_parquet([folder / p for p in sorted(meta["parts"], reverse=True)],\n'
        "                           hive_partitioning=False)",
        ("tests/io/test_table_parts.py",),
    ),
    M(
        "table/parts written over the committed generation",
        "curate/table.py",
        '    gen = f"g{max(used, default=0) + 1:06d}"\n    keep = {PARTS_MANIFEST',
        '    gen = f"g{max(used, default=1):06d}"\n    keep = {PARTS_MANIFEST',
        ("tests/io/test_table_parts.py",),
    ),
    M(
        "store/unknown id not refused",
        "curate/io/store.py",
        "        if missing.size:\n            raise DataError(",
        "        if False:\n            raise DataError(",
        ("tests/io/test_store.py", "tests/io/test_store_index.py"),
    ),
    M(
        "validate/rules inverted",
        "curate/steps/validate.py",
        '            (short < self.min_side, f"smaller than {self.min_side}px"),',
        '            (short >= self.min_side, f"smaller than {self.min_side}px"),',
        ("tests/steps",),
    ),
    M(
        "scale/rank engine ignored",
        "curate/steps/rank.py",
        "    if shard is None and engine is None and launch.world == 1:",
        "    if shard is None and launch.world == 1:",
        ("tests/scale/test_ray_engine.py",),
    ),
    M(
        "dedup/semdedup probe ignored",
        "curate/dedup/tiers.py",
        "        _, assign = km.index.search(x, probe)",
        "        _, assign = km.index.search(x, 1)",
        ("tests/dedup/test_semdedup.py",),
    ),
    # -- dedup -------------------------------------------------------------------------------
    M(
        "dedup/caption MinHash threshold ignored",
        "curate/steps/dedup.py",
        '                thr = threshold("minhash")',
        '                thr = 0.0 if threshold("minhash") is not None else None',
        ("tests/dedup/test_dedup_steps.py",),
    ),
    # -- audit -------------------------------------------------------------------------------
    M(
        "audit/memorization ratio not 1/3",
        "curate/audit/metrics.py",
        "RATIO_THRESHOLD = 1.0 / 3.0",
        "RATIO_THRESHOLD = 0.5",
        ("tests/audit",),
    ),
    M(
        "rank/flip does not flip",
        "curate/rank/vgr.py",
        '_score(denoiser, x.flip(-1), sample_ids, config, cond, "flip")',
        '_score(denoiser, x, sample_ids, config, cond, "flip")',
        ("tests/rank",),
    ),
    # -- protect: tests/protect, one behaviour per mutation ---------------------------------
    M(
        "train/job drops sigma_n_column",
        "curate/train/job.py",
        '        "sigma_n_column": config.sigma_n_column,',
        '        "sigma_n_column": None,',
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/command drops sigma_n_column",
        "curate/cli/model.py",
        "    config = pop_config(TrainConfig, settings)",
        "    config = dataclasses.replace(pop_config(TrainConfig, settings), sigma_n_column=None)",
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/step drops sigma_n_column",
        "curate/steps/train.py",
        '        if self.seed is None:\n            values["seed"] = recipe_seed',
        '        values["sigma_n_column"] = None\n'
        '        if self.seed is None:\n            values["seed"] = recipe_seed',
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/latent models get the ve ambient form",
        "curate/train/loop.py",
        '            self.form = "vp" if bundle.latent else "ve"',
        '            self.form = "ve"',
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/vp ambient loss computed in ve form",
        "curate/train/loss.py",
        "        est = vp_noisy_estimate(x_t, d, s_t, s_n)",
        "        est, x_n = tweedie_noisy_estimate(d, x_in, sigma, sigma_n), target",
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/ambient noise redrawn on the per-batch path",
        "curate/train/loop.py",
        "                    else fixed_noise(cfg.seed, ids, self.model_shape)",
        "                    else redrawn_noise(cfg.seed, ids, self.model_shape, epochs)",
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/resume ignores a changed sigma_n",
        "curate/train/config.py",
        '    "objective",\n    "sigma_n",\n',
        '    "objective",\n',
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/caption dropout ignored",
        "curate/train/loop.py",
        "            if self.config.caption_dropout and rng.random() < self.config.caption_dropout:",
        "            if False:",
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/embedding noise on dropped captions",
        "curate/train/loop.py",
        "cond, cfg.embedding_noise, cfg.seed, keys, 0, mask=keep",
        "cond, cfg.embedding_noise, cfg.seed, keys, 0, mask=None",
        ("tests/protect/test_train.py",),
    ),
    M(
        "train/weight-only control drops the ambient weight",
        "curate/train/loss.py",
        "    return ambient_d_weight(sigma, sigma_n, form) * ddpm_loss(denoiser, x0, sigma, eta, cond)",
        "    return ddpm_loss(denoiser, x0, sigma, eta, cond)",
        ("tests/train/test_loss.py",),
    ),
    M(
        "train/corrected ambient weight not divided out",
        "curate/train/loss.py",
        '    if weight == "corrected":\n        loss = loss /',
        '    if weight == "never":\n        loss = loss /',
        ("tests/train/test_loss.py",),
    ),
    M(
        "train/weight-only control trains on noisy copies",
        "curate/train/loop.py",
        '            if cfg.ambient_noise == "weight_only":',
        '            if cfg.ambient_noise == "never":',
        ("tests/train/test_loop.py",),
    ),
    M(
        "table/merged captions beat rewritten ones (swapped precedence)",
        "curate/table.py",
        '    if "caption_new" in table.columns:\n'
        '        new = pl.col("caption_new")\n'
        '        if table.schema["caption_new"] != pl.List(pl.String):\n'
        "            new = pl.concat_list(new)\n"
        '        candidates.append(pl.when(pl.col("caption_new").is_not_null()).then(new))\n'
        '    if "dedup_images_captions" in table.columns:\n'
        '        merged = pl.col("dedup_images_captions")\n'
        "        candidates.append(pl.when(merged.list.len() > 0).then(merged))\n",
        '    if "dedup_images_captions" in table.columns:\n'
        '        merged = pl.col("dedup_images_captions")\n'
        "        candidates.append(pl.when(merged.list.len() > 0).then(merged))\n"
        '    if "caption_new" in table.columns:\n'
        '        new = pl.col("caption_new")\n'
        '        if table.schema["caption_new"] != pl.List(pl.String):\n'
        "            new = pl.concat_list(new)\n"
        '        candidates.append(pl.when(pl.col("caption_new").is_not_null()).then(new))\n',
        ("tests/protect/test_records.py",),
    ),
    M(
        "runner/stats miss ingest rejections",
        "curate/runner.py",
        '        rem.filter(~pl.col("keep"))\n        .group_by(["removed_by", "reason_kind"])',
        '        rem.filter(~pl.col("keep") & (pl.col("removed_by") != "ingest"))\n'
        '        .group_by(["removed_by", "reason_kind"])',
        ("tests/protect/test_records.py",),
    ),
    M(
        "export/Hub token written to the log",
        "curate/export.py",
        '    log.info("pushed %s", repo_id)',
        '    log.info("pushed %s (token %s)", repo_id, __import__("huggingface_hub").get_token())',
        ("tests/protect/test_records.py",),
    ),
    M(
        "recipe/yaml.load with an unsafe loader",
        "curate/recipe.py",
        '        raw = yaml.safe_load(path.read_text(encoding="utf-8"))',
        '        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.Loader)',
        ("tests/protect/test_recipe.py",),
    ),
    M(
        "recipe/--set parsed with an unsafe loader",
        "curate/recipe.py",
        '            value = yaml.safe_load(text) if text != "" else ""',
        '            value = yaml.load(text, Loader=yaml.UnsafeLoader) if text != "" else ""',
        ("tests/protect/test_recipe.py",),
    ),
    M(
        "dedup/auto: copy groups in the data stay in the background",
        "curate/dedup/auto.py",
        "                w = label[iu] == label[ju]\n",
        "                w = np.zeros(len(iu), bool)\n",
        ("tests/dedup/test_dedup_auto.py",),
    ),
    M(
        "scale/the clip tier's clip_probe ignored",
        "curate/steps/dedup.py",
        "                        kmeans_probe=self.clip_probe,\n",
        "",
        ("tests/dedup/test_dedup_steps.py", "tests/dedup/test_semdedup.py"),
    ),
    M(
        "scale/the merge recomputes the captions' MinHash signatures",
        "curate/steps/dedup.py",
        '        sig = _shard_column(ctx, "minhash", len(captions))',
        "        sig = None",
        ("tests/scale/test_shards.py",),
    ),
    M(
        "dedup/auto: chance agreement of weak tiers counted as copies (loosest rung only)",
        "curate/dedup/auto.py",
        "REACH_LADDER = (REACH, 0.35, 0.25, 0.15)",
        "REACH_LADDER = (REACH,)",
        ("tests/dedup/test_dedup_auto.py",),
    ),
    M(
        "dedup/auto: a pair of two bands judged by the stricter band alone",
        "curate/dedup/tiers.py",
        "    return np.where(band[a] == band[b], own, np.clip(cross, lo, hi))",
        "    return own",
        ("tests/dedup/test_dedup_auto.py",),
    ),
    M(
        "dedup/mutual guard disabled",
        "curate/dedup/clusters.py",
        '    if guard == "mutual":\n        edges = mutual_filter(n, edges, mutual_m)',
        "    if False:\n        edges = mutual_filter(n, edges, mutual_m)",
        ("tests/protect/test_dedup.py",),
    ),
    M(
        "dedup/caption dedup ignores image clusters",
        "curate/steps/dedup.py",
        '        if "dedup_images_cluster" in ok.columns:',
        "        if False:",
        ("tests/protect/test_dedup.py",),
    ),
    M(
        "guidance/cfg combined wrongly",
        "curate/models/sampling.py",
        "    return x0_u + scale * (x0_c - x0_u)",
        "    return x0_c + scale * (x0_c - x0_u)",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/AMG judges the raw x0, not the clipped one the step uses",
        "curate/guidance/amg.py",
        "        x0 = limit(x0)\n        if denoiser.vae is None:",
        "        if denoiser.vae is None:",
        ("tests/guidance/test_amg_clip.py",),
    ),
    M(
        "sampling/Heun's correction guided as a step of its own",
        "curate/models/sampling.py",
        "model(x_next, sigma_next, **extra_args)",
        "model(x_next, sigma_next, step=i, **extra_args)",
        ("tests/models/test_sampling.py",),
    ),
    M(
        "scale/torchrun sampling drops the other processes' AMG records",
        "curate/models/sampling.py",
        "            guidance.records = [r for part in launch.gather(records) for r in part]",
        "            pass",
        ("tests/scale/test_sample_audit_torchrun.py",),
    ),
    M(
        "protect/held-out space not whitened",
        "curate/audit/metrics.py",
        "        return cls(mean=mean, basis=vt[:k] / std[:k, None])",
        "        return cls(mean=mean, basis=vt[:k])",
        ("tests/audit/test_heldout_space.py",),
    ),
    M(
        "protect/prompt accuracy counts every generation as a hit",
        "curate/steps/compare.py",
        "        hits.append((target in tied) / len(tied))",
        "        hits.append(1.0)",
        ("tests/audit/test_heldout_space.py",),
    ),
    M(
        "dedup/caption disagreement ignored",
        "curate/steps/dedup.py",
        "                    if j < self.caption_agreement:",
        "                    if False:",
        ("tests/dedup/test_dedup_views.py", "tests/dedup/test_dedup_auto.py"),
    ),
    M(
        "guidance/calibrated lambda_max at the copies' own maximum",
        "curate/guidance/calibrate.py",
        "        hi, wrong = _cut(final, copy)",
        "        hi, wrong = float(fc.max()), 0",
        ("tests/guidance/test_amg_calibration.py",),
    ),
    M(
        "guidance/despecification sign flipped",
        "curate/guidance/amg.py",
        "new = xu + (s0 - t1).view(shape) * (xc - xu)  # G_spe",
        "new = xu + (s0 + t1).view(shape) * (xc - xu)  # G_spe",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/caption deduplication sign flipped",
        "curate/guidance/amg.py",
        "new = new - t2.view(shape) * (x0_n - xu)",
        "new = new + t2.view(shape) * (x0_n - xu)",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/--amg-guidances parsed as all three",
        "curate/guidance/config.py",
        '        object.__setattr__(self, "guidances", tuple(guidances))',
        '        object.__setattr__(self, "guidances", GUIDANCES)',
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/spe applied when left out",
        "curate/guidance/amg.py",
        'c1 if "spe" in cfg.guidances else 0.0',
        "c1",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/dup applied when left out",
        "curate/guidance/amg.py",
        'if "dup" in cfg.guidances and self.text_encoder is not None:',
        "if self.text_encoder is not None:",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/sim applied when left out",
        "curate/guidance/amg.py",
        'if "sim" in cfg.guidances and c3 > 0:',
        "if c3 > 0:",
        ("tests/protect/test_guidance.py",),
    ),
    M(
        "guidance/AMG gate per batch",
        "curate/guidance/amg.py",
        "active = sim > lam  # (B,)",
        "active = (sim > lam).any().expand_as(sim)  # (B,)",
        ("tests/protect/test_guidance.py",),
    ),
    # -- the two AMG fixes (tests/guidance/test_amg_training_index.py) -----------------------
    M(
        "guidance/AMG index over every row, copies included",
        "curate/guidance/run.py",
        '    keep = distinct_training_rows(train.images, getattr(train, "keys", None), clusters)',
        "    keep = np.arange(len(train.images))",
        ("tests/guidance/test_amg_training_index.py",),
    ),
    M(
        "guidance/s2 capped by the discarded s1",
        "curate/guidance/amg.py",
        '                    t1, t2 = text_scales(sim[a], s0, c1 if "spe" in cfg.guidances else 0.0, c2)',
        "                    t1, t2 = text_scales(sim[a], s0, c1, c2)\n"
        '                    t1 = t1 if "spe" in cfg.guidances else torch.zeros_like(t1)',
        ("tests/guidance/test_amg_training_index.py", "tests/protect/test_guidance.py"),
    ),
    M(
        "dedup/verify against the kept row, not the centre",
        "curate/dedup/clusters.py",
        "        centre = _best_per_label(np.where(multi, labels, -1), priority, degree)",
        "        centre = _best_per_label(np.where(multi, labels, -1), priority)",
        ("tests/dedup/test_dedup_clusters.py",),
    ),
    M(
        "io/fetch_retries ignored",
        "curate/io/ingest.py",
        "timeout=config.fetch_timeout, retries=config.fetch_retries",
        "timeout=config.fetch_timeout, retries=2",
        ("tests/io/test_ingest.py",),
    ),
    M(
        "scale/local Ray workers at Ray's nice 15",
        "curate/engines/ray_data.py",
        '             log_to_driver=False, _system_config={"worker_niceness": 0})  # fmt: skip',
        "             log_to_driver=False)  # fmt: skip",
        ("tests/scale/test_ray_engine.py",),
    ),
    M(
        "scale/a Ray actor loads the model for every shard",
        "curate/engines/ray_data.py",
        "                                   models=self.models, store=store)  # fmt: skip",
        "                                   models=_CountingDict(), store=store)  # fmt: skip",
        ("tests/scale/test_ray_engine.py",),
    ),
    M(
        "scale/CPU stages ignore OMP_NUM_THREADS",
        "curate/core/threads.py",
        "        n = min(n, int(omp))",
        "        n = n",
        ("tests/test_threads.py",),
    ),
    M(
        "scale/CPU stages use the machine's cores, not the process's",
        "curate/core/threads.py",
        "        return max(1, len(os.sched_getaffinity(0)))",
        "        return max(1, os.cpu_count() or 1)",
        ("tests/test_threads.py",),
    ),
]


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, float, str | None]:
    """Run ``tests`` in ``tree``: (all passed, seconds, the first failing test's node id)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    existing = [t for t in tests if (tree / t.split("::")[0]).exists()]
    if not existing:
        return True, 0.0, None
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *existing],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        passed = proc.returncode == 0
        failed = [
            line.split(" ", 1)[1].split(" - ", 1)[0]
            for line in proc.stdout.splitlines()
            if line.startswith(("FAILED ", "ERROR "))
        ]
        first = failed[0] if failed else (None if passed else f"pytest exit {proc.returncode}")
    except subprocess.TimeoutExpired:
        passed, first = False, "timeout"  # a hang is a failure the suite would show
    return passed, time.perf_counter() - start, first


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only",
        action="append",
        default=None,
        help="run mutations whose name starts with this (repeatable)",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of mutations not run now from the existing report (with --only)",
    )
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "reports" / "mutation"))
    args = ap.parse_args()

    only = tuple(args.only) if args.only else None
    chosen = [m for m in MUTATIONS if only is None or m.name.startswith(only)]
    # SIGTERM / SIGHUP unwind like Ctrl-C, so every ``finally`` runs: the mutated file in the
    # copy is restored, the running pytest is killed (subprocess.run) and the copy is removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    work = Path(tempfile.mkdtemp(prefix="curate-mutation-"))
    tree = work / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(".venv", ".git", "runs", "reports", "__pycache__"),
    )
    results = []
    try:
        base_ok, _, base_failed = run_tests(
            tree, tuple(sorted({t for m in chosen for t in m.tests})), 1800
        )
        if not base_ok:
            print(
                f"warning: the protecting tests fail before any mutation ({base_failed}); "
                "a kill then proves nothing",
                file=sys.stderr,
            )
        for m in chosen:
            path = tree / m.file
            original = path.read_text(encoding="utf-8")
            if m.old not in original:
                results.append(
                    {"name": m.name, "status": "stale", "seconds": 0.0, "killed_by": None}
                )
                print(f"stale     {m.name}")
                continue
            path.write_text(original.replace(m.old, m.new, 1), encoding="utf-8")
            try:
                passed, seconds, killer = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            status = "survived" if passed else "killed"
            results.append(
                {
                    "name": m.name,
                    "status": status,
                    "seconds": round(seconds, 1),
                    "killed_by": killer,
                }
            )
            print(f"{status:<9} {m.name} ({seconds:.0f} s){' by ' + killer if killer else ''}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    for r in results:
        r["run"] = "this"
    if args.merge and out.with_suffix(".json").exists():
        earlier = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        rows = {r["name"]: {"killed_by": None, **r, "run": "earlier"} for r in earlier["results"]}
        rows.update({r["name"]: r for r in results})
        results = [rows[m.name] for m in MUTATIONS if m.name in rows]  # the list's order
        base_ok = base_ok and earlier.get("baseline_tests_pass", True)
    now = sum(r["run"] == "this" for r in results)
    live = [r for r in results if r["status"] != "stale"]
    killed = sum(r["status"] == "killed" for r in live)
    summary = {
        "mutations": len(results),
        "killed": killed,
        "survived": sum(r["status"] == "survived" for r in live),
        "stale": len(results) - len(live),
        "kill_rate": round(killed / len(live), 3) if live else None,
        "baseline_tests_pass": base_ok,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Targeted mutations",
        "",
        f"`python scripts/mutation_check.py{''.join(f' --only {o!r}' for o in only or ())}"
        f"{' --merge' if args.merge else ''}`: "
        f"each row breaks one behaviour in a copy of the tree and runs the tests that should "
        f"protect it. Kill rate **{summary['kill_rate']}** ({killed} of {len(live)}; "
        f"{summary['stale']} stale). The protecting tests "
        f"{'pass' if base_ok else 'FAIL'} on the unmutated tree."
        + (
            f" {now} rows are from this run; the others (run: earlier) are kept from the "
            "previous report."
            if now < len(results)
            else ""
        ),
        "",
        "| mutation | result | seconds | first failing test | run |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {r['name']} | {r['status']} | {r['seconds']} | {r['killed_by'] or ''} "
            f"| {r['run']} |"
            for r in results
        ],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print(f"kill rate {summary['kill_rate']} ({killed}/{len(live)}), {summary['stale']} stale")


if __name__ == "__main__":
    main()
