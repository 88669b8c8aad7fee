"""``rank`` split over rows: ``--shard i/N`` + ``curate merge``, and ``torchrun`` with two gloo
processes on CPU, both give the scores of one process. The two processes are started with the
variables torchrun sets (``tests/reliability/helpers.py: torchrun``); the last test checks those
variables against the real launcher's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.runner import apply_step
from curate.shards import merge_run, shard_apply, shard_of
from curate.steps.base import RunContext
from curate.steps.rank import Rank
from curate.table import read_table
from tests.reliability.helpers import rank_env, torchrun


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from curate.models.presets import build_model, save_pipeline

    bundle = build_model("tiny", channels=1, resolution=16, seed=0)
    out = tmp_path_factory.mktemp("model") / "pipe"
    save_pipeline(out, bundle.unet, bundle.scheduler_config)
    return out


@pytest.fixture(scope="module")
def digits(digits_runs):
    return digits_runs(40)


@pytest.fixture(scope="module")
def one_process(digits, tiny_pipeline, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    shutil.copytree(digits, run)
    step = Rank(model=str(tiny_pipeline), batch_size=8, flag_top_fraction=0.25,
                drop_top_fraction=0.1)  # fmt: skip
    apply_step(run, step, RunContext(run_dir=run, quiet=True))
    return step, read_table(run)


def test_rank_shards_merge_to_the_scores_of_one_process(one_process, digits, tmp_path):
    step, expected = one_process
    run = tmp_path / "run"
    shutil.copytree(digits, run)
    for i in range(3):
        shard_apply(run, [step], i, 3, RunContext(run_dir=run, quiet=True))
    merge_run(run, quiet=True)
    merged = read_table(run)
    assert_frame_equal(merged, expected)
    # the global part ran on all rows: 10 % of 40 dropped, not 10 % of each shard
    assert merged["rank_drop"].is_not_null().sum() == 4
    assert merged["rank_pct"].max() == 1.0


def test_torchrun_two_gloo_processes_score_like_one(one_process, digits, tiny_pipeline, tmp_path):
    step, expected = one_process
    run = tmp_path / "run"
    shutil.copytree(digits, run)
    proc = torchrun("rank", "--dataset", run, "--model", tiny_pipeline, "--batch-size", "8",
                    "--device", "cpu", "-q")  # fmt: skip
    assert proc.rc == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ranked 40 samples") == 1  # process 0 reports, once
    table = read_table(run)
    # rank_flag / rank_drop are not asked for here: compare the scores
    cols = ["sample_id", "rank_vgr", "rank_pct"]
    assert_frame_equal(table.select(cols), expected.select(cols))
    # each process scored its own rows: shard r of 2 holds the ids hashing to r
    sdir = next((run / "steps").glob("*-rank")) / "shards"
    for r in range(2):
        meta = json.loads((sdir / f"part-{r}-of-2.json").read_text())
        part = pl.read_parquet(sdir / f"part-{r}-of-2.parquet")
        assert meta["rows"] == part.height > 0
        assert (shard_of(part["sample_id"].to_list(), 2) == r).all()


def test_the_rank_processes_get_the_variables_the_real_launcher_sets():
    """The forked rank processes above stand in for ``torchrun --standalone``: each variable they
    are given is one the real launcher sets, with the same value (the rendezvous address and
    port aside)."""
    code = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
            "['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', "
            "'MASTER_ADDR', 'MASTER_PORT']}))")  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--no-python", "--", sys.executable, "-c", code]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    real = sorted((json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")),
                  key=lambda env: env["RANK"])  # fmt: skip
    assert len(real) == 2
    for rank, env in enumerate(real):
        ours = rank_env(rank, 2, port=int(env["MASTER_PORT"]))
        assert set(ours) == set(env)
        for key in set(ours) - {"MASTER_ADDR"}:
            assert ours[key] == env[key], key
