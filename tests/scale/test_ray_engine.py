"""``--engine ray``: the per-row part of dedup and rank as a Ray Data pipeline on a local Ray
this test starts (explicit logical CPUs, fractional actor CPUs); its shard files are the ones
the in-process ``--shard`` path writes, and ``curate merge`` gives the unsharded table.
``curate rank --engine ray`` scores on Ray and merges itself: the table of in-process
``--shard`` jobs and their merge. (``rank_run(engine=...)`` is ``shard_apply`` on the engine,
then ``merge_run``.)

One actor in the module imports torch and diffusers (~10 s of CPU on 2 cores): the rank
test's, which computes several shards. The dedup tiers here load no model.

Ray is part of the dev extra: this test runs in ``make test`` and CI; it never skips.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from curate.cli import cli
from curate.engines.ray_data import RayEngine, start_local_ray
from curate.runner import apply_step
from curate.shards import merge_run, shard_apply
from curate.steps.base import RunContext
from curate.steps.dedup import DedupCaptions, DedupImages
from curate.table import read_table

IMAGES = DedupImages(tiers=("exact", "phash", "pixel"))
CAPTIONS = DedupCaptions(tiers=("exact", "minhash"))
N = 3


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # 3 logical CPUs on any machine: 2 actors at 0.5 CPU leave 2 for Ray Data's read tasks
    # and its own operators (actors at a whole CPU each can starve the reads forever), and a
    # pool the CLI sizes is 1 actor (the CPUs less the 2 it keeps for reading). Started as the
    # engine starts its own local Ray (workers at normal priority).
    start_local_ray(3)
    yield ray
    ray.shutdown()


STEPS = (IMAGES, CAPTIONS)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from curate.models.presets import build_model, save_pipeline

    bundle = build_model("tiny", channels=3, resolution=16, seed=0)
    path = tmp_path_factory.mktemp("model") / "pipe"
    save_pipeline(path, bundle.unet, bundle.scheduler_config)
    return str(path)


@pytest.fixture(scope="module")
def one_process(photos_run_template, tmp_path_factory):
    """The dedup steps applied in one process, unsharded."""
    steps = STEPS
    run = tmp_path_factory.mktemp("one") / "run"
    shutil.copytree(photos_run_template, run)
    for step in steps:
        apply_step(run, step, RunContext(run_dir=run, quiet=True))
    return read_table(run)


def _parts(run: Path) -> dict[str, pl.DataFrame]:
    """Every part file of the run, by ``NN-name/part-i-of-N``, rows sorted by sample_id."""
    return {
        f"{p.parent.parent.name}/{p.stem}": pl.read_parquet(p).sort("sample_id")
        for p in sorted((run / "steps").glob("*/shards/part-*.parquet"))
    }


def test_ray_shards_equal_in_process_shards_and_merge_to_one_process(
    local_ray, one_process, photos_run_template, tmp_path
):
    steps = STEPS
    run = tmp_path / "ray"
    shutil.copytree(photos_run_template, run)
    engine = RayEngine(of=N, actors=2, actor_cpus=0.5)
    markers = shard_apply(run, steps, None, None, RunContext(run_dir=run, quiet=True),
                          engine=engine)  # fmt: skip
    assert [(m["step"], m["shard"]) for m in markers] == [
        (s.name, i) for s in steps for i in range(N)
    ]
    assert all(m["engine"]["name"] == "ray" and m["of"] == N for m in markers)
    # the actors ran at normal priority: at Ray's default nice 15 they starve beside any other
    # busy process on the machine
    assert {m["engine"]["nice"] for m in markers} == {0}
    # a pool of two actors (which of them computes which shard is Ray's choice)
    assert {m["engine"]["actors"] for m in markers} == {2}

    # the same shard files as the in-process --shard path
    ref = tmp_path / "process"
    shutil.copytree(photos_run_template, ref)
    for i in range(N):
        shard_apply(ref, steps, i, N, RunContext(run_dir=ref, quiet=True))
    ours, theirs = _parts(run), _parts(ref)
    assert sorted(ours) == sorted(theirs) and len(ours) == len(steps) * N
    for key, frame in theirs.items():
        assert_frame_equal(ours[key], frame, check_exact=True)
    plan = json.loads((run / "shards.json").read_text())
    assert plan["of"] == N and plan["mode"] == "apply"

    merge_run(run, quiet=True)
    merge_run(ref, quiet=True)
    merged = read_table(run)
    assert_frame_equal(merged, read_table(ref), check_exact=True)  # = the in-process shards
    assert_frame_equal(merged, one_process, check_exact=True)  # = one unsharded process
    assert merged["dedup_images_drop"].is_not_null().sum() > 0

    # a second run finds every shard done and starts no pipeline
    again = engine.run(run, [(m["index"], s) for m, s in zip(markers[::N], steps, strict=True)],
                       RunContext(run_dir=run, quiet=True), plan)  # fmt: skip
    assert all(m["skipped"] for m in again) and len(again) == len(steps) * N


def test_cli_dedup_with_engine_ray_then_merge(local_ray, one_process, photos_run_template,
                                              tmp_path):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(photos_run_template, run)
    runner = CliRunner()
    r = runner.invoke(cli, ["dedup", str(run), "--images", "exact,phash,pixel",
                            "--captions", "exact,minhash", "--engine", "ray", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # 62 rows: one shard of ROWS_PER_PART, so one actor
    assert "shard 0/1, 62 rows" in r.output and "ray: 1 actor(s)" in r.output
    assert f"curate merge {run}" in r.output
    r = runner.invoke(cli, ["merge", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert_frame_equal(read_table(run), one_process)


def _rank_args(run: Path, model: str) -> list[str]:
    return ["rank", "--dataset", str(run), "--model", model, "--batch-size", "8",
            "--drop-top-fraction", "0.1", "-q"]  # fmt: skip


def test_cli_rank_with_engine_ray_is_the_in_process_rank_table(local_ray, model,
                                                                photos_run_template, tmp_path,
                                                                monkeypatch):  # fmt: skip
    ref, run = tmp_path / "process", tmp_path / "ray"
    shutil.copytree(photos_run_template, ref)
    shutil.copytree(photos_run_template, run)
    runner = CliRunner()
    for i in range(N):  # in process: the --shard jobs, then their merge
        r = runner.invoke(cli, [*_rank_args(ref, model), "--shard", f"{i}/{N}"])
        assert r.exit_code == 0, r.output
    assert runner.invoke(cli, ["merge", str(ref), "-q"]).exit_code == 0
    # 25 rows a shard: the engine cuts the 62 rows into the same 3 shards, all on the one
    # actor the CLI's pool has on this 3-CPU Ray
    monkeypatch.setattr("curate.engines.ray_data.ROWS_PER_PART", 25)
    r = runner.invoke(cli, [*_rank_args(run, model), "--engine", "ray"])
    assert r.exit_code == 0, r.output
    assert f"rank: {N} shard(s) on ray (1 actor(s)), merged" in r.output
    markers = [json.loads(p.read_text()) for p in run.glob("steps/*-rank/shards/part-*.json")]
    assert sorted(m["shard"] for m in markers) == list(range(N))
    assert all(m["engine"]["name"] == "ray" for m in markers)
    assert sum(m["rows"] for m in markers) == 62
    # the actor computed every shard and loaded the model once
    assert len({m["engine"]["pid"] for m in markers}) == 1
    assert {m["engine"]["model_loads"] for m in markers} == {1}, markers
    table = read_table(run)
    assert table["rank_vgr"].is_not_null().sum() > 0
    assert table["rank_drop"].is_not_null().sum() == 6
    assert_frame_equal(table, read_table(ref), check_exact=True)


class _Cluster:
    """What the engine asks of Ray to size its pool: the cluster's resources."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_the_pool_asks_for_a_gpu_per_actor_when_the_cluster_has_gpus():
    from curate.cli.engine import cli_engine

    gpus = _Cluster(CPU=16.0, GPU=2.0)
    # one actor per GPU at num_gpus=1, on cuda; --device auto decides with the cluster's GPUs
    # (the driver's own `auto` may be the CPU), so the CLI hands the engine the flag as given
    engine, _, _ = cli_engine("ray", None, None, device="auto")
    assert engine.device == "auto"
    assert engine._pool(gpus, engine.device, 8) == (2, 1.0, 1.0, "cuda")
    assert RayEngine()._pool(gpus, "cuda", 8) == (2, 1.0, 1.0, "cuda")
    # --device cpu, or no GPU: fractional CPU actors, no GPU asked for
    assert RayEngine()._pool(gpus, "cpu", 8) == (8, 1.75, 0.0, "cpu")
    assert RayEngine()._pool(_Cluster(CPU=4.0), "auto", 8) == (2, 1.0, 0.0, "cpu")


def _one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(cli, args)
    assert r.exit_code != 0
    lines = [x for x in r.output.strip().splitlines() if x]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_engine_errors_are_one_line(photos_run_template, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(photos_run_template, run)
    msg = _one_line_error(["dedup", str(run), "--ray-address", "auto", "-q"])
    assert "--ray-address needs --engine ray" in msg
    msg = _one_line_error(["rank", "--dataset", str(run), "--ray-address", "auto", "-q"])
    assert "--ray-address needs --engine ray" in msg
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    msg = _one_line_error(["dedup", str(run), "--engine", "ray", "-q"])
    assert "pip install 'curate[ray]'" in msg


def test_a_step_failing_in_an_actor_is_its_own_one_line_error(local_ray, photos_run_template,
                                                               tmp_path):  # fmt: skip
    from curate.errors import ModelError

    run = tmp_path / "run"
    shutil.copytree(photos_run_template, run)
    # a copy-detection model that is not there: the actor fails loading it (a step that needs
    # no torch, so the actor starts in ~2 s)
    bad = DedupImages(tiers=("sscd",), sscd_model=str(tmp_path / "no-model.onnx"))
    with pytest.raises(ModelError) as err:
        shard_apply(run, [bad], None, None, RunContext(run_dir=run, quiet=True),
                    engine=RayEngine(of=1, actors=1, actor_cpus=0.5))  # fmt: skip
    assert type(err.value) is ModelError  # the step's own error, not Ray's wrapper of it
    assert "no-model" in str(err.value) and len(str(err.value).splitlines()) == 1
