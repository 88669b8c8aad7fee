"""Text alignment (CLIP score) of a text-conditional model's generations in ``curate audit``."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from curate.audit.alignment import clip_scorer, clip_scores
from curate.cli.audit import audit
from curate.errors import ModelError


class _FixedScorer:
    """Known unit embeddings: the i-th image embedded -> e_i, text t -> its given vector."""

    name, dim = "fixed", 3

    def __init__(self, text_vectors):
        self.text_vectors = text_vectors
        self.seen = 0

    def embed(self, images):
        rows = np.eye(3, dtype=np.float32)[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return rows

    def embed_text(self, texts):
        v = np.asarray([self.text_vectors[t] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_clip_score_is_100_times_the_cosine_of_each_image_with_its_own_prompt():
    scorer = _FixedScorer({"a": [1, 0, 0], "b": [1, 1, 0], "c": [0, 0, -1]})
    images = torch.zeros(3, 1, 8, 8)
    scores = clip_scores(scorer, images, ["a", "b", "c"], batch_size=2)
    np.testing.assert_allclose(scores, [100.0, 100 / np.sqrt(2), -100.0], rtol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        clip_scores(scorer, images, ["a"])


def test_open_clip_text_embeddings_are_unit_norm_deterministic_and_distinct(tiny_open_clip):
    cfg, ckpt = tiny_open_clip
    scorer = clip_scorer(str(cfg), str(ckpt))
    texts = ["a photo of the digit 3", "a photo of the digit 7", "a photo of the digit 3"]
    t = scorer.embed_text(texts)
    assert t.shape == (3, scorer.dim)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(t[0], t[2], atol=1e-6)
    assert not np.allclose(t[0], t[1], atol=1e-4)


def test_missing_alignment_weights_are_a_model_error(tiny_open_clip, tmp_path):
    cfg, _ = tiny_open_clip
    with pytest.raises(ModelError, match="does not exist"):
        clip_scorer(str(cfg), str(tmp_path / "missing.pt"))


@pytest.fixture(scope="module")
def digits_run(digits_runs):
    """``builtin:digits`` (first 32 rows) ingested into a run folder."""
    return digits_runs(32)


def _audit_args(model, digits_run, out):
    args = [str(model), "--train", str(digits_run), "--out", str(out), "--num-samples", "4"]
    return args + ["--steps", "2", "--device", "cpu", "--quiet"]


def test_text_model_audit_scores_each_generation_against_its_prompt(
    digits_run, tmp_path, tiny_model, tiny_open_clip
):
    cfg, ckpt = tiny_open_clip
    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "audit"
    args = _audit_args(model, digits_run, out)
    args += ["--alignment-clip", str(cfg), "--alignment-pretrained", str(ckpt)]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    assert "text alignment, CLIP score" in result.output
    align = json.loads((out / "audit.json").read_text())["metrics"]["text_alignment"]
    table = pl.read_parquet(out / "samples.parquet")
    assert align["name"] == "CLIP score (clip-tiny-clip-test-tiny.pt)"
    assert align["value"] == pytest.approx(table["clip_score"].mean())
    # Each row is scored against its own prompt: recompute row 1 from the two towers.
    from curate.core.images import embed_tensor, pil_to_tensor

    scorer = clip_scorer(str(cfg), str(ckpt))
    from PIL import Image

    img = pil_to_tensor([Image.open(out / "samples" / "00001.png")], channels=1, resolution=16)
    expected = 100 * float(
        embed_tensor(scorer, img)[0] @ scorer.embed_text([table["prompt"][1]])[0]
    )
    assert table["clip_score"][1] == pytest.approx(expected, abs=0.5)  # PNG is 8-bit
    assert "CLIP score" in (out / "report" / "index.html").read_text()


def test_text_model_audit_without_a_clip_model_says_alignment_was_not_measured(
    digits_run, tmp_path, tiny_model
):
    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "audit"
    result = CliRunner().invoke(audit, _audit_args(model, digits_run, out))
    assert result.exit_code == 0, result.output
    align = json.loads((out / "audit.json").read_text())["metrics"]["text_alignment"]
    assert align["value"] is None and "--alignment-clip" in align["note"]
    assert "clip_score" not in pl.read_parquet(out / "samples.parquet").columns


def test_alignment_on_an_unconditional_model_is_a_usage_error(
    digits_run, tmp_path, tiny_model, tiny_open_clip
):
    cfg, ckpt = tiny_open_clip
    model = tiny_model(tmp_path / "model")
    args = _audit_args(model, digits_run, tmp_path / "audit")
    result = CliRunner().invoke(audit, args + ["--alignment-clip", str(cfg)])
    assert result.exit_code == 2 and "text-conditional" in result.output


def test_amg_audit_reports_text_alignment_plain_and_guided(
    digits_run, tmp_path, tiny_model, tiny_open_clip
):
    cfg, ckpt = tiny_open_clip
    model = tiny_model(tmp_path / "model", "tiny-clip")
    out = tmp_path / "audit"
    args = _audit_args(model, digits_run, out) + ["--guidance-scale", "3", "--amg"]
    args += ["--amg-threshold", "always"]
    args += ["--alignment-clip", str(cfg), "--alignment-pretrained", str(ckpt)]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    table = json.loads((out / "comparison.json").read_text())["table"]
    row = next(r for r in table if r[0].startswith("text alignment"))
    plain = pl.read_parquet(out / "samples.parquet")["clip_score"].mean()
    guided = pl.read_parquet(out / "amg" / "samples.parquet")["clip_score"].mean()
    assert row[1:] == [f"{plain:.2f}", f"{guided:.2f}"]
