"""Two processes on one run folder, kill -9 at several moments, torn marker files: the next
run always works and gives the same result as an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import time

import polars as pl
import pytest

from tests.reliability.helpers import (
    curate,
    finish,
    kept_pairs,
    kill9,
    start,
    truncate_half,
    wait_for,
    write_recipe,
)

# rank makes the run last a few seconds on CPU (a window for the second process and the kills)
SLOW_STEPS = (
    "  - validate: {min_side: 1}\n"
    "  - rank: {}\n"
    "  - select: {where: 'rank_pct >= 0.9', reason: riskiest tenth}\n"
    "  - dedup_captions: {tiers: [exact]}\n"
)


def slow_recipe(path, limit: int = 300):
    return write_recipe(
        path,
        f"name: slow\nseed: 0\ndataset: {{name: 'builtin:digits', limit: {limit}}}\n"
        f"steps:\n{SLOW_STEPS}export: {{format: parquet}}\n",
    )


def signature(run):
    """What must be identical between an interrupted-then-resumed run and a clean one."""
    t = pl.read_parquet(run / "table.parquet")
    drops = sorted(c for c in t.columns if c.endswith("_drop"))
    rows = sorted(t.select("sample_id", "status", "reason", *drops).iter_rows())
    kept = kept_pairs(run)
    stats = json.loads((run / "stats.json").read_text())
    return rows, kept, (stats["rows"], stats["kept"], stats["removed"])


def _ok(res):
    assert not res.traceback and not res.internal_error, res
    assert "JSONDecodeError" not in res.output, res
    assert res.rc == 0, res


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill_ref")
    recipe = slow_recipe(base / "slow.yaml")
    run = base / "run"
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    _ok(res)
    return recipe, run, signature(run)


def test_two_processes_one_run_folder(tmp_path, reference):
    recipe, _, expected = reference
    run = tmp_path / "runs" / "c"
    a = start("clean", "--recipe", recipe, "--out", run, "-q", log=tmp_path / "a.log")
    time.sleep(0.5)
    b = start("clean", "--recipe", recipe, "--out", run, "-q", log=tmp_path / "b.log")
    ra, rb = finish(a), finish(b)
    results = {a.pid: ra, b.pid: rb}
    for r in results.values():
        assert not r.traceback and not r.internal_error, r
    assert sorted(r.rc for r in results.values()) == [0, 1], f"{ra}\n{rb}"
    loser_pid, loser = next((p, r) for p, r in results.items() if r.rc == 1)
    winner_pid = a.pid if loser_pid == b.pid else b.pid
    lines = [ln for ln in loser.stderr.splitlines() if ln.strip() and "Error" in ln]
    assert len(lines) == 1, loser
    assert "in use" in lines[0] and str(winner_pid) in lines[0], lines[0]
    assert signature(run) == expected
    _ok(curate("clean", "--recipe", recipe, "--out", run, "-q"))
    _ok(curate("clean", "--recipe", recipe, "--out", run, "--force", "-q"))
    assert signature(run) == expected


def test_lock_of_dead_process_is_taken_over(tmp_path, reference):
    recipe, _, expected = reference
    run = tmp_path / "run"
    p = start("clean", "--recipe", recipe, "--out", run, "-q", log=tmp_path / "k.log")
    assert wait_for(lambda: (run / "ingest.json").exists(), timeout=120)
    kill9(p)
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    _ok(res)
    assert signature(run) == expected


def _in_step(run, word):
    steps = run / "steps"
    return steps.is_dir() and any(word in p.name for p in steps.iterdir())


def _exporting(run):
    return _in_step(run, "export") or any("export" in p.name for p in run.iterdir())


MOMENTS = {
    "ingest": lambda run: run.is_dir() and any(run.iterdir()),
    "step": lambda run: _in_step(run, "rank"),
    "export": _exporting,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill9_then_rerun_matches(tmp_path, reference, moment):
    recipe, _, expected = reference
    run = tmp_path / "run"
    p = start("clean", "--recipe", recipe, "--out", run, "-q", log=tmp_path / "k.log")
    hit = wait_for(
        lambda: MOMENTS[moment](run) or p.poll() is not None, timeout=120, interval=0.002
    )
    if moment == "step":
        time.sleep(0.3)  # inside the rank computation
    finished = p.poll() is not None
    kill9(p)
    assert hit
    if finished:
        pytest.skip(f"the run finished before the {moment} moment could be caught")
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    _ok(res)
    assert signature(run) == expected


def test_kill9_during_reingest_then_old_config(tmp_path, reference):
    """kill -9 while a changed ``dataset.limit`` re-ingests a finished run; the old config then
    works again (with --overwrite if curate asks for it) and gives the old result."""
    recipe, ref_run, expected = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run, run, symlinks=True)
    names = set(os.listdir(run))
    mtimes = {n: (run / n).stat().st_mtime_ns for n in ("ingest.json", "table.parquet")}

    def reingesting():
        if set(os.listdir(run)) != names:
            return True
        return any(
            (run / n).exists() and (run / n).stat().st_mtime_ns != m for n, m in mtimes.items()
        )

    log = tmp_path / "k.log"
    p = start(
        "clean", "--recipe", recipe, "--out", run, "--set", "dataset.limit=150", "-q", log=log
    )
    wait_for(lambda: reingesting() or p.poll() is not None, timeout=120, interval=0.002)
    kill9(p)
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    assert not res.traceback and not res.internal_error, res
    if res.rc == 2 and "--overwrite" in res.stderr:
        res = curate("clean", "--recipe", recipe, "--out", run, "--overwrite", "-q")
    _ok(res)
    assert signature(run) == expected


# -- torn files -----------------------------------------------------------------------------
def _torn(run, pattern):
    files = sorted(run.glob(pattern))
    assert files, f"no {pattern} in {run}"
    for f in files:
        truncate_half(f)


@pytest.mark.parametrize(
    "pattern", ["steps/*/done.json", "ingest.json", "report/sections/*", "stats.json"]
)
def test_torn_file_then_rerun(fresh_digits_run, pattern):
    recipe, run = fresh_digits_run
    expected = signature(run)
    _torn(run, pattern)
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    _ok(res)
    assert signature(run) == expected
    info = curate("info", run)
    _ok(info)
