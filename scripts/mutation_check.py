"""Targeted mutations: break one documented behaviour at a time and check that a test fails.

Each mutation replaces one exact snippet of the library with a broken version, in a copy of
the tree (the working tree is never touched), and runs the tests that should protect that
behaviour. A mutation is *killed* when those tests fail, *survived* when they all pass; a
mutation whose snippet is no longer in the code is reported as *stale* (the list needs
updating, which is itself a finding). Writes ``reports/mutation.md`` and ``.json``.

    python scripts/mutation_check.py                    # every mutation
    python scripts/mutation_check.py --only trust       # mutations whose name starts with it
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
        '            f"{flag} {path}: the folder is not empty and was not made by curate; "\n'
        '            "choose a new or empty folder (curate never writes into or deletes your files)"',
        "    if False:\n        raise UsageError(\n"
        '            f"{flag} {path}: the folder is not empty and was not made by curate; "\n'
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
        "trust/no lock",
        "curate/io/folders.py",
        "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
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
        "    return _hash(upstream, step.name, step.config(), seed)",
        "    return _hash(step.name, step.config(), seed)",
        ("tests/test_runner.py",),
    ),
    M(
        "store/rows in storage order",
        "curate/io/store.py",
        '        rows = self.dataset.select([self._row[s] for s in sample_ids])["image"]',
        '        rows = self.dataset.select(sorted(self._row[s] for s in sample_ids))["image"]',
        ("tests/io", "tests/train/test_loop.py", "tests/audit"),
    ),
    M(
        "validate/rules inverted",
        "curate/steps/validate.py",
        '            (short < self.min_side, f"smaller than {self.min_side}px"),',
        '            (short >= self.min_side, f"smaller than {self.min_side}px"),',
        ("tests/steps",),
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
]


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    existing = [t for t in tests if (tree / t.split("::")[0]).exists()]
    if not existing:
        return True, 0.0
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
    except subprocess.TimeoutExpired:
        passed = False  # a hang is a failure the suite would show
    return passed, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run mutations whose name starts with this")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "reports" / "mutation"))
    args = ap.parse_args()

    chosen = [m for m in MUTATIONS if args.only is None or m.name.startswith(args.only)]
    work = Path(tempfile.mkdtemp(prefix="curate-mutation-"))
    tree = work / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(".venv", ".git", "runs", "reports", "__pycache__"),
    )
    results = []
    try:
        base_ok, _ = run_tests(tree, tuple(sorted({t for m in chosen for t in m.tests})), 1800)
        if not base_ok:
            print("warning: the protecting tests fail before any mutation", file=sys.stderr)
        for m in chosen:
            path = tree / m.file
            original = path.read_text(encoding="utf-8")
            if m.old not in original:
                results.append({"name": m.name, "status": "stale", "seconds": 0.0})
                print(f"stale     {m.name}")
                continue
            path.write_text(original.replace(m.old, m.new, 1), encoding="utf-8")
            try:
                passed, seconds = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            status = "survived" if passed else "killed"
            results.append({"name": m.name, "status": status, "seconds": round(seconds, 1)})
            print(f"{status:<9} {m.name} ({seconds:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Targeted mutations",
        "",
        f"`python scripts/mutation_check.py{' --only ' + args.only if args.only else ''}`: "
        f"each row breaks one behaviour in a copy of the tree and runs the tests that should "
        f"protect it. Kill rate **{summary['kill_rate']}** ({killed} of {len(live)}; "
        f"{summary['stale']} stale).",
        "",
        "| mutation | result | seconds |",
        "| --- | --- | --- |",
        *[f"| {r['name']} | {r['status']} | {r['seconds']} |" for r in results],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    print(f"kill rate {summary['kill_rate']} ({killed}/{len(live)}), {summary['stale']} stale")


if __name__ == "__main__":
    main()
