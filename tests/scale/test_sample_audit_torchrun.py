"""``torchrun --nproc_per_node 2 -m curate sample|audit``: two gloo processes on CPU split the
generations by batch and give the files one process writes (AMG's per-sample records too). The
two processes are started with the variables torchrun sets
(``tests/reliability/helpers.py: torchrun``)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from curate.cli import cli
from tests.reliability.helpers import torchrun


def _curate(*args: str, procs: int = 1):
    """``curate ARGS`` in this process (the one-process reference), or under torchrun."""
    if procs == 1:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result
    # (the real launcher needs "--": its parser reads curate's --num as --numa-binding)
    out = torchrun(*args, nproc=procs, timeout=400)
    assert out.rc == 0, out.stderr[-3000:]
    return out


def _pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.mark.timeout(900)
def test_two_processes_sample_and_audit_like_one(digits_runs, tmp_path):
    # 7 samples in batches of 2: process 0 draws batches 0 and 2, process 1 batches 1 and 3
    args = ["sample", "digits-tiny", "--num", "7", "--batch-size", "2", "--steps", "4", "-q"]
    _curate(*args, "--out", str(tmp_path / "one"))
    two = _curate(*args, "--out", str(tmp_path / "two"), procs=2)
    assert two.stdout.count("samples written") == 1
    one_png, two_png = _pngs(tmp_path / "one"), _pngs(tmp_path / "two")
    assert len(one_png) == 7 and one_png == two_png
    assert (tmp_path / "one/samples.jsonl").read_text() == (
        tmp_path / "two/samples.jsonl"
    ).read_text()

    run = digits_runs(24)
    audit = ["audit", "digits-tiny", "--train", str(run), "--num-samples", "7", "--batch-size",
             "2", "--steps", "4", "--amg", "--amg-calibration-samples", "4", "-q"]  # fmt: skip
    _curate(*audit, "--out", str(tmp_path / "a1"))
    _curate(*audit, "--out", str(tmp_path / "a2"), procs=2)
    for sub in ("", "amg"):
        d1, d2 = tmp_path / "a1" / sub, tmp_path / "a2" / sub
        assert _pngs(d1 / "samples") == _pngs(d2 / "samples")
        m1 = json.loads((d1 / "audit.json").read_text())["metrics"]
        m2 = json.loads((d2 / "audit.json").read_text())["metrics"]
        assert m1 == m2
        assert_frame_equal(pl.read_parquet(d1 / "samples.parquet"),
                           pl.read_parquet(d2 / "samples.parquet"))  # fmt: skip
    # every process's guided steps reach amg_steps.parquet, and the calibration is the same
    s1 = pl.read_parquet(tmp_path / "a1/amg/amg_steps.parquet")
    s2 = pl.read_parquet(tmp_path / "a2/amg/amg_steps.parquet")
    assert s1["sample"].n_unique() == 7
    assert_frame_equal(s1, s2)
    c1 = json.loads((tmp_path / "a1/amg/amg.json").read_text())["config"]
    c2 = json.loads((tmp_path / "a2/amg/amg.json").read_text())["config"]
    assert c1 == c2
