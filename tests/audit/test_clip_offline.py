"""CLIP weights that cannot be loaded (offline, a wrong tag, a missing file) are one clear line
naming the model, the weights and the flag that provides them: no traceback, no open_clip log,
and no sampling time spent before the refusal."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from curate.audit.alignment import clip_scorer, load_clip
from curate.cli.audit import audit
from curate.errors import ModelError


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    return digits_runs(16)


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output  # open_clip's own ERROR log stays off the terminal
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    return lines[0]


def test_a_nonexistent_alignment_tag_is_one_line_naming_model_weights_and_flag(
    digits_run, tmp_path, tiny_model
):
    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "audit"
    args = [str(model), "--train", str(digits_run), "--out", str(out), "--num-samples", "4"]
    args += ["--steps", "2", "--device", "cpu", "--quiet"]
    args += ["--alignment-clip", "ViT-B-32", "--alignment-pretrained", "nonexistent-tag"]
    line = _one_line_error(CliRunner().invoke(audit, args))
    assert "'nonexistent-tag'" in line and "open_clip model ViT-B-32" in line
    assert "--alignment-pretrained PATH" in line and "laion2b_s34b_b79k" in line  # known tags
    assert not (out / "samples").exists()  # refused before generating


def test_a_nonexistent_features_tag_names_features_model(digits_run, tmp_path):
    args = ["--oracle", "--train", str(digits_run), "--out", str(tmp_path / "a"), "--quiet"]
    args += ["--num-samples", "4", "--steps", "2", "--features", "clip"]
    args += ["--features-model", "nonexistent-tag"]
    line = _one_line_error(CliRunner().invoke(audit, args))
    assert "'nonexistent-tag'" in line and "ViT-B-32" in line and "--features-model PATH" in line


def test_a_known_tag_missing_offline_names_its_hub_repository(capfd):
    """The tests run offline (conftest); the default weights are not shipped."""
    load_clip.cache_clear()
    try:
        load_clip("ViT-B-32", "laion2b_s34b_b79k")
    except ModelError as err:
        msg = str(err)
    else:
        pytest.skip("the ViT-B-32 laion2b weights are in this machine's cache")
    assert "\n" not in msg and "cannot be downloaded offline" in msg
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in msg and "--alignment-pretrained" in msg
    assert "ERROR" not in capfd.readouterr().err  # open_clip's log was silenced


def test_an_unknown_model_names_the_flags(tiny_open_clip):
    with pytest.raises(ModelError, match=r"^--alignment-clip ViT-B-32-nope, .*unknown open_clip"):
        clip_scorer("ViT-B-32-nope", "nonexistent-tag")
    cfg, ckpt = tiny_open_clip  # a local checkpoint still loads
    assert clip_scorer(str(cfg), str(ckpt)).dim == 32
