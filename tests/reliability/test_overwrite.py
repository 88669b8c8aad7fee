"""curate never deletes or modifies what it did not make; replacing its own output of another
kind or run needs --overwrite; the run folder itself is never an export target."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.reliability.corpus import write_simple_jsonl
from tests.reliability.helpers import (
    Watched,
    curate,
    digits_recipe,
    disk_export_dataset,
    export_folder,
    kept_and_removed,
    parquet_export_files,
    parquet_export_rows,
    read_run_table,
    write_recipe,
)

LOCK = (".curate.lock",)  # a lock file may be created in a run folder; it is curate's own


def _refused(res, rc: int, name) -> None:
    assert not res.traceback and not res.internal_error, res
    assert res.rc == rc, res
    lines = res.error_lines()
    assert len(lines) == 1, res
    assert str(name) in lines[0] or str(name).rstrip("/").split("/")[-1] in lines[0], lines


def _ok(res):
    assert not res.traceback and not res.internal_error, res
    assert res.rc == 0, res


def _user_folder(path, with_run_names: bool = False):
    """A folder of the user's own files (optionally with names curate uses inside runs)."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 my photo")
    if with_run_names:
        for name in ("images", "steps", "report", "export"):
            (path / name).mkdir()
            (path / name / "mine.txt").write_text(f"{name} of mine\n")
        (path / "stats.json").write_text('{"mine": true}\n')
    return path


# -- run folders ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_run_names", [False, True])
def test_ingest_refuses_non_empty_user_folder(tmp_path, with_run_names):
    out = _user_folder(tmp_path / "mine", with_run_names)
    watch = Watched([out])
    res = curate("ingest", "--dataset", "builtin:digits", "--limit", "5", "--out", out, "-q")
    _refused(res, 2, out)
    assert watch.changes() == []


@pytest.mark.parametrize("with_run_names", [False, True])
def test_clean_refuses_non_empty_user_folder(tmp_path, with_run_names):
    out = _user_folder(tmp_path / "mine", with_run_names)
    recipe = write_recipe(tmp_path / "r.yaml", digits_recipe(limit=5))
    watch = Watched([out])
    res = curate("clean", "--recipe", recipe, "--out", out, "-q")
    _refused(res, 2, out)
    assert watch.changes() == []


def test_ingest_beside_the_dataset_is_refused(tmp_path):
    folder = tmp_path / "ds"
    write_simple_jsonl(folder, n=8)
    watch = Watched([tmp_path])
    res = curate("ingest", "--dataset", "data.jsonl", "--out", ".", "-q", cwd=folder)
    assert not res.traceback, res
    assert res.rc == 2, res
    assert len(res.error_lines()) == 1, res
    assert watch.changes() == []


def test_ingest_into_empty_folder_works(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    _ok(curate("ingest", "--dataset", "builtin:digits", "--limit", "5", "--out", out, "-q"))
    assert json.loads((out / ".curate.json").read_text())["kind"] == "run"


def test_reingest_other_source_needs_overwrite(digits_run):
    _, run = digits_run
    (run / "notes.txt").write_text("the user's own file inside the run folder\n")
    watch = Watched([run], exclude=LOCK)
    res = curate("ingest", "--dataset", "builtin:digits", "--limit", "10", "--out", run, "-q")
    _refused(res, 2, run)
    assert "--overwrite" in res.error_lines()[0]
    assert watch.changes() == []
    res = curate(
        "ingest", "--dataset", "builtin:digits", "--limit", "10", "--out", run, "--overwrite", "-q"
    )
    _ok(res)
    assert read_run_table(run).height == 10
    for stale in ("steps", "stats.json", "report", "export", "recipe.resolved.yaml"):
        assert not (run / stale).exists(), f"stale {stale} left after re-ingest"
    assert (run / "notes.txt").read_text().startswith("the user's own")
    info = curate("info", run)
    _ok(info)
    assert "steps:" not in info.stdout, info
    assert "rows: 10 " in info.stdout, info


def test_reingest_same_source_is_unchanged(digits_run):
    _, run = digits_run
    before = (run / "table.parquet").read_bytes()
    res = curate("ingest", "--dataset", "builtin:digits", "--limit", "60", "--out", run)
    _ok(res)
    assert "unchanged" in res.output.lower(), res
    assert (run / "table.parquet").read_bytes() == before
    assert (run / "steps").is_dir()


def test_recipe_name_cannot_escape_runs(tmp_path):
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    recipe = write_recipe(work / "r.yaml", digits_recipe(name="../../x", limit=5))
    watch = Watched([tmp_path], exclude=("a/b/work/runs",))
    res = curate("clean", "--recipe", recipe, "-q", cwd=work)
    _ok(res)
    assert watch.changes() == []
    made = [p for p in (work / "runs").iterdir()]
    assert len(made) == 1 and made[0].is_dir(), made
    assert (made[0] / "table.parquet").exists()
    assert not (tmp_path / "a" / "b" / "x").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["ABSOLUTE", "a/../../b"])
def test_odd_recipe_names(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    if name == "ABSOLUTE":
        name = str(tmp_path / "absolute-name")
    recipe = write_recipe(work / "r.yaml", digits_recipe(name=json.dumps(name), limit=5))
    watch = Watched([tmp_path], exclude=("work/runs",))
    res = curate("clean", "--recipe", recipe, "-q", cwd=work)
    assert not res.traceback and not res.internal_error, res
    assert res.rc in (0, 2), res
    assert watch.changes() == []
    assert not (tmp_path / "absolute-name").exists()


def test_recipe_export_out_into_user_folder_is_refused(tmp_path):
    mine = _user_folder(tmp_path / "mine")
    text = digits_recipe(limit=5).replace(
        "export: {format: parquet}", f"export: {{format: parquet, out: {json.dumps(str(mine))}}}"
    )
    recipe = write_recipe(tmp_path / "r.yaml", text)
    watch = Watched([mine])
    res = curate("clean", "--recipe", recipe, "--out", tmp_path / "run", "-q")
    assert not res.traceback and not res.internal_error, res
    assert res.rc == 2, res
    assert watch.changes() == []


# -- exports ----------------------------------------------------------------------------------
def _export(run, *args):
    return curate("export", run, *map(str, args), "-q")


def test_export_to_missing_and_empty_folder(digits_run, tmp_path):
    _, run = digits_run
    _, kept, _ = kept_and_removed(run)
    _ok(_export(run, "--format", "parquet", "--out", tmp_path / "new"))
    from datasets import load_dataset

    files = [str(p) for p in parquet_export_files(tmp_path / "new")]
    ds = load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == kept
    empty = tmp_path / "empty"
    empty.mkdir()
    _ok(_export(run, "--format", "disk", "--out", empty))
    assert len(disk_export_dataset(empty)) == kept


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_refuses_user_folder(digits_run, tmp_path, overwrite):
    _, run = digits_run
    mine = _user_folder(tmp_path / "mine", with_run_names=True)
    watch = Watched([mine])
    res = _export(
        run, "--format", "parquet", "--out", mine, *(["--overwrite"] if overwrite else [])
    )
    _refused(res, 2, mine)
    assert watch.changes() == []


def test_export_over_other_format_needs_overwrite(digits_run, tmp_path):
    _, run = digits_run
    out = tmp_path / "exp"
    _ok(_export(run, "--format", "disk", "--out", out))
    watch = Watched([out])
    res = _export(run, "--format", "parquet", "--out", out)
    _refused(res, 2, out)
    assert "--overwrite" in res.error_lines()[0]
    assert watch.changes() == []
    _ok(_export(run, "--format", "parquet", "--out", out, "--overwrite"))
    assert parquet_export_files(out)
    assert not (out / "dataset").exists() and not (out / "state.json").exists()


def test_export_over_other_runs_export_needs_overwrite(digits_run, tmp_path):
    _, run = digits_run
    other = tmp_path / "other"
    _ok(curate("ingest", "--dataset", "builtin:digits", "--limit", "12", "--out", other, "-q"))
    out = tmp_path / "exp"
    _ok(_export(other, "--format", "parquet", "--out", out))
    watch = Watched([out])
    res = _export(run, "--format", "parquet", "--out", out)
    _refused(res, 2, out)
    assert watch.changes() == []
    _ok(_export(run, "--format", "parquet", "--out", out, "--overwrite"))
    data = parquet_export_rows(out)
    assert data.height == kept_and_removed(run)[1]


def test_export_same_format_again_replaces_own_export(digits_run, tmp_path):
    _, run = digits_run
    out = tmp_path / "exp"
    _ok(_export(run, "--format", "parquet", "--out", out))
    _ok(_export(run, "--format", "parquet", "--out", out))


@pytest.mark.parametrize("target", ["run", "parent", "images", "steps"])
def test_export_never_targets_the_run(digits_run, target):
    _, run = digits_run
    out = {"run": run, "parent": run.parent, "images": run / "images", "steps": run / "steps"}[
        target
    ]
    watch = Watched([run.parent], exclude=tuple(f"run/{x}" for x in LOCK))
    for extra in ([], ["--overwrite"]):
        res = _export(run, "--format", "parquet", "--out", out, *extra)
        assert not res.traceback and not res.internal_error, res
        assert res.rc == 2, res
        assert len(res.error_lines()) == 1, res
    assert watch.changes() == []


def test_default_export_other_format(tmp_path):
    """Default --out: a disk export then a parquet export never silently replace each other.

    With one export folder (RUN/export) the second needs --overwrite; with one folder per
    format (RUN/export/disk, RUN/export/parquet) both exist side by side.
    """
    from datasets import load_dataset

    run = tmp_path / "run"
    _ok(curate("ingest", "--dataset", "builtin:digits", "--limit", "20", "--out", run, "-q"))
    _ok(_export(run, "--format", "disk"))
    assert len(disk_export_dataset(export_folder(run, "disk"))) == 20
    if (run / "export" / "disk").is_dir():
        watch = Watched([run / "export" / "disk"])
        _ok(_export(run, "--format", "parquet"))
        assert watch.changes() == []
        assert len(disk_export_dataset(export_folder(run, "disk"))) == 20
    else:
        watch = Watched([run / "export"])
        res = _export(run, "--format", "parquet")
        _refused(res, 2, "export")
        assert watch.changes() == []
        _ok(_export(run, "--format", "parquet", "--overwrite"))
        assert not (run / "export" / "dataset").exists()
    files = [str(p) for p in parquet_export_files(export_folder(run, "parquet"))]
    assert len(load_dataset("parquet", data_files=files, split="train")) == 20
    _ok(_export(run, "--format", "parquet"))  # the same export again: curate's own, replaced


def test_export_of_user_folder_is_refused(tmp_path):
    """``curate export`` of a folder that is not a run: one line, nothing written."""
    mine = _user_folder(tmp_path / "mine", with_run_names=True)
    watch = Watched([mine])
    res = _export(mine, "--format", "parquet")
    assert not res.traceback, res
    assert res.rc == 2, res
    assert watch.changes() == []


def test_rerun_of_recipe_keeps_user_files_in_run(fresh_digits_run):
    recipe, run = fresh_digits_run
    (run / "mine.txt").write_text("keep me\n")
    res = curate("clean", "--recipe", recipe, "--out", run, "--force", "-q")
    _ok(res)
    assert (run / "mine.txt").read_text() == "keep me\n"


def test_moved_run_still_works(digits_run, tmp_path):
    """``mv runs/a runs/b``: the run is still curate's; a rerun rebuilds and replaces its own
    export at the new place (not judged by the old path)."""
    recipe, run = digits_run
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    _ok(curate("info", moved))
    _ok(_export(moved, "--format", "parquet", "--out", tmp_path / "exp"))
    _ok(curate("clean", "--recipe", recipe, "--out", moved, "--force", "-q"))
    shutil.rmtree(moved / "export")
    _ok(curate("clean", "--recipe", recipe, "--out", moved, "-q"))
    assert parquet_export_files(export_folder(moved, "parquet")), "export not rebuilt after a move"
