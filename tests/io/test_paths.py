"""read_image_file: a path string -> bytes or a stable reason, never an exception."""

from __future__ import annotations

import os
import random

import pytest

from curate.io.paths import REASONS, read_image_file


@pytest.fixture
def dataset(tmp_path):
    """``tmp_path/ds`` with images/a.png, images/sub/, and a private file beside the dataset."""
    ds = tmp_path / "ds"
    (ds / "images" / "sub").mkdir(parents=True)
    (ds / "images" / "a.png").write_bytes(b"A-bytes")
    (tmp_path / "private.png").write_bytes(b"secret")
    return ds


def test_paths_inside_the_dataset_are_read(dataset):
    for value in (
        "images/a.png",
        "./images/a.png",
        "images/sub/../a.png",
        str(dataset / "images/a.png"),
    ):
        assert read_image_file(value, dataset) == (b"A-bytes", None), value


@pytest.mark.parametrize(
    "value",
    ["../private.png", "images/../../private.png", "images/sub/../../../private.png"],
)
def test_dotdot_out_of_the_dataset_is_refused(dataset, value):
    assert read_image_file(value, dataset) == (None, "outside_dataset")
    assert read_image_file(value, dataset, allow_outside=True) == (b"secret", None)


def test_absolute_paths_outside_are_refused(dataset, tmp_path):
    private = str(tmp_path / "private.png")
    assert read_image_file(private, dataset) == (None, "outside_dataset")
    assert read_image_file("/etc/passwd", dataset) == (None, "outside_dataset")
    assert read_image_file(private, dataset, allow_outside=True) == (b"secret", None)
    # without a dataset folder (builtin / Hub rows) an absolute path is outside too
    assert read_image_file(private, None) == (None, "outside_dataset")
    assert read_image_file(private, None, allow_outside=True) == (b"secret", None)


def test_symlinks_leading_out_are_refused(dataset, tmp_path):
    (dataset / "images" / "out.png").symlink_to(tmp_path / "private.png")
    (dataset / "images" / "in.png").symlink_to(dataset / "images" / "a.png")
    (dataset / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert read_image_file("images/out.png", dataset) == (None, "outside_dataset")
    assert read_image_file("linked/private.png", dataset) == (None, "outside_dataset")
    assert read_image_file("images/in.png", dataset) == (b"A-bytes", None)
    assert read_image_file("images/out.png", dataset, allow_outside=True) == (b"secret", None)


def test_a_sibling_folder_with_the_same_prefix_is_outside(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds-private").mkdir()
    (tmp_path / "ds-private" / "x.png").write_bytes(b"x")
    assert read_image_file(str(tmp_path / "ds-private" / "x.png"), tmp_path / "ds") == (
        None,
        "outside_dataset",
    )
    assert read_image_file("../ds-private/x.png", tmp_path / "ds")[1] == "outside_dataset"


def test_too_long_paths(dataset):
    assert read_image_file("images/" + "x" * 300 + ".png", dataset) == (None, "path_too_long")
    deep = "images/" + "/".join(["d" * 200] * 25) + "/x.png"  # > 4096 bytes, each part short
    assert read_image_file(deep, dataset) == (None, "path_too_long")
    assert read_image_file("/" + "é" * 200 + ".png", dataset, allow_outside=True)[1] == (
        "path_too_long"  # 400 bytes in UTF-8
    )


@pytest.mark.parametrize(
    "value",
    [
        "http://example.com/a.png",
        "https://example.com/a/b.jpg?x=1",
        "s3://bucket/key.png",
        "HTTPS://EXAMPLE.COM/A.PNG",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
def test_urls_are_not_fetched(dataset, value):
    assert read_image_file(value, dataset) == (None, "url_not_fetched")


def test_missing_and_not_a_file(dataset):
    assert read_image_file("images/nope.png", dataset) == (None, "missing_file")
    assert read_image_file("images/a.png/x.png", dataset) == (None, "missing_file")
    assert read_image_file("", dataset) == (None, "missing_file")
    assert read_image_file("images", dataset) == (None, "not_a_file")
    assert read_image_file("images/sub/", dataset) == (None, "not_a_file")
    assert read_image_file("/dev/zero", dataset, allow_outside=True) == (None, "not_a_file")


def test_a_fifo_is_not_read_and_does_not_hang(dataset):
    os.mkfifo(dataset / "images" / "pipe.png")
    assert read_image_file("images/pipe.png", dataset) == (None, "not_a_file")


def test_too_large_and_unreadable(dataset):
    assert read_image_file("images/a.png", dataset, max_bytes=3) == (None, "file_too_large")
    assert read_image_file("images/a.png", dataset, max_bytes=7) == (b"A-bytes", None)
    (dataset / "images" / "loop.png").symlink_to("loop.png")  # ELOOP, readable as root too
    assert read_image_file("images/loop.png", dataset) == (None, "unreadable_file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_unreadable(dataset):
    path = dataset / "images" / "a.png"
    path.chmod(0)
    try:
        assert read_image_file("images/a.png", dataset) == (None, "unreadable_file")
    finally:
        path.chmod(0o644)


def test_invalid_strings(dataset):
    assert read_image_file("images/a.png\x00.txt", dataset) == (None, "invalid_path")
    assert read_image_file("images/\ud800.png", dataset) == (None, "invalid_path")
    assert read_image_file(None, dataset) == (None, "invalid_path")
    assert read_image_file(b"images/a.png", dataset) == (None, "invalid_path")


def test_non_utf8_file_names_are_read(dataset):
    raw = os.fsencode(dataset / "images") + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    value = os.fsdecode(b"images/caf\xe9.png")  # what a folder listing gives
    assert read_image_file(value, dataset) == (b"latin-1 name", None)


def test_never_raises_for_any_string(dataset):
    rng = random.Random(0)
    alphabet = ["a", "/", "..", ".", "\x00", "\ud800", "\udcff", "é", "~", ":", "\\", " ", "\n"]
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(400)]
    values += ["/", "//", "~", "~/x.png", ".", "..", "\x00", " ", "/proc/self/mem", "a" * 10_000]
    for value in values:
        for base in (dataset, None):
            data, reason = read_image_file(value, base)
            assert (data is None) == (reason is not None)
            assert reason is None or reason in REASONS, (value, reason)
