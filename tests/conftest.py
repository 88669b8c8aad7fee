"""Shared fixtures. Offline by force: an accidental Hub call fails loudly instead of hanging."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def photos_run_template(tmp_path_factory) -> Path:
    """``builtin:photos`` ingested once per session; copy it with ``photos_run`` before mutating."""
    from curate.io.ingest import IngestConfig, ingest

    run = tmp_path_factory.mktemp("photos") / "run"
    ingest(IngestConfig(name="builtin:photos"), run, quiet=True)
    return run


@pytest.fixture
def photos_run(photos_run_template, tmp_path) -> Path:
    """A private copy of the ingested ``builtin:photos`` run folder."""
    dst = tmp_path / "run"
    shutil.copytree(photos_run_template, dst)
    return dst
