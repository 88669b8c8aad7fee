"""Fixtures of the reliability suite: the hostile-input corpus and cheap run folders.

Every test drives the real ``curate`` command in a subprocess (what a user runs), so a
traceback, an exit code or a stray write is seen exactly as a user would see it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.reliability.corpus import build_corpus  # noqa: E402
from tests.reliability.helpers import curate, digits_recipe, write_recipe  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The bad-input corpus (six formats, >= 200 rows); read-only by convention."""
    import datasets

    datasets.disable_progress_bars()
    return build_corpus(tmp_path_factory.mktemp("corpus") / "corpus")


@pytest.fixture(scope="session")
def digits_run_template(tmp_path_factory):
    """A finished ``curate clean`` run (60 digits, validate + dedup_captions + parquet export)."""
    base = tmp_path_factory.mktemp("digits_template")
    recipe = write_recipe(base / "recipe.yaml", digits_recipe("tmpl", limit=60))
    run = base / "run"
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    assert res.rc == 0, res
    return recipe, run


@pytest.fixture
def digits_run(digits_run_template, tmp_path):
    """A private copy of the finished digits run: ``(recipe, run)``."""
    recipe, run = digits_run_template
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return recipe, dst


@pytest.fixture
def fresh_digits_run(digits_run_template, tmp_path):
    """The digits run made afresh at its final path (not a copy): ``(recipe, run)``."""
    recipe, _ = digits_run_template
    run = tmp_path / "run"
    res = curate("clean", "--recipe", recipe, "--out", run, "-q")
    assert res.rc == 0, res
    return recipe, run
