"""The report's drawing helpers: histogram axes, ticks, threshold lines, and limited galleries."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from curate.report import (
    _CHAR_W,
    histogram_svg,
    limited_gallery,
    more_link,
    nice_ticks,
    tick_labels,
    write_listing,
)

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also checks that the SVG is well-formed XML


def _texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def _assert_no_overlap(ticks: list[ET.Element]) -> None:
    """Adjacent x tick labels, centred on their x, leave a gap between them."""
    spans = []
    for t in ticks:
        x, w = float(t.get("x")), len(t.text) * _CHAR_W
        spans.append((x - w / 2, x + w / 2))
    spans.sort()
    for (_, right), (left, _) in zip(spans[:-1], spans[1:], strict=True):
        assert left > right, f"tick labels overlap: {[t.text for t in ticks]}"


@pytest.mark.parametrize(
    "values",
    [
        np.r_[np.linspace(0.02227, 0.9999, 200)],  # the report that printed "0.99990.02227"
        0.9990 + 0.0009 * np.random.default_rng(0).random(300),  # a tight range near 1
        np.random.default_rng(1).exponential(3000, 500),  # large values
        np.random.default_rng(2).normal(0, 1e-6, 100),  # tiny values around 0
    ],
)
@pytest.mark.parametrize("width", [480, 240, 160])
def test_x_ticks_are_few_round_and_never_overlap(values, width):
    root = _parse(histogram_svg(values.tolist(), width=width, label="sscd"))
    ticks = _texts(root, "xtick")
    assert 2 <= len(ticks) <= 6
    labels = [t.text for t in ticks]
    assert len(set(labels)) == len(labels), labels  # neighbours tell apart
    for s in labels:
        assert len(s) <= 8, labels  # a few significant digits, not 0.999012345
        float(s)
    nums = [float(s) for s in labels]
    assert nums == sorted(nums)
    _assert_no_overlap(ticks)
    # every label lies inside the picture
    for t in ticks:
        x, w = float(t.get("x")), len(t.text) * _CHAR_W
        assert x - w / 2 >= 0 and x + w / 2 <= width


def test_tick_values_cover_the_data_and_are_round():
    assert nice_ticks(0.02227, 0.9999) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert tick_labels([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    ticks = nice_ticks(0.9990, 0.9999, 4)
    assert ticks[0] <= 0.9990 and ticks[-1] >= 0.9999 and len(ticks) <= 4
    assert tick_labels([0.999, 0.9995, 1.0]) == ["0.9990", "0.9995", "1.0000"]
    assert tick_labels([0.0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]
    assert tick_labels([0, 10, 20]) == ["0", "10", "20"]
    counts = nice_ticks(0, 7, 4, integer=True)
    assert counts[0] == 0 and counts[-1] >= 7 and all(float(t).is_integer() for t in counts)
    assert nice_ticks(0, 1, 6, integer=True) == [0, 1]


def test_y_axis_counts_and_axis_titles():
    values = [0.1] * 7 + [0.5] * 3 + [0.9]
    root = _parse(histogram_svg(values, bins=10, label="phash"))
    yticks = [t.text for t in _texts(root, "ytick")]
    assert yticks[0] == "0"
    assert all(s.isdigit() for s in yticks)  # whole counts
    assert int(yticks[-1]) >= 7  # the tallest bar fits under the top tick
    assert [t.text for t in _texts(root, "ylabel")] == ["count"]
    assert _texts(root, "xlabel")[0].text == "phash (n=11)"
    tooltips = [t.text for t in root.iter(f"{SVG}title")]
    assert any(t.endswith(": 7") for t in tooltips) and any(t.endswith(": 3") for t in tooltips)
    # xlabel overrides the label as the x axis title
    root = _parse(histogram_svg(values, label="phash", xlabel="distance", ylabel="pairs"))
    assert _texts(root, "xlabel")[0].text == "distance (n=11)"
    assert _texts(root, "ylabel")[0].text == "pairs"


def test_threshold_line_with_its_value():
    values = np.random.default_rng(0).uniform(0.2, 0.8, 400).tolist()
    root = _parse(histogram_svg(values, threshold=0.52))
    lines = [e for e in root.iter(f"{SVG}line") if e.get("class") == "threshold"]
    assert len(lines) == 1
    assert [t.text for t in _texts(root, "threshold-label")] == ["threshold 0.52"]
    # the line sits where 0.52 is on the axis: between the ticks around it
    ticks = {float(t.text): float(t.get("x")) for t in _texts(root, "xtick")}
    below = max(v for v in ticks if v <= 0.52)
    above = min(v for v in ticks if v >= 0.52)
    x = float(lines[0].get("x1"))
    assert ticks[below] <= x <= ticks[above]
    expect = ticks[below] + (ticks[above] - ticks[below]) * (0.52 - below) / (above - below)
    assert x == pytest.approx(expect, abs=1.0)


def test_threshold_outside_the_data_widens_the_axis_and_several_are_labelled():
    values = [3, 4, 4, 5, 6]
    root = _parse(histogram_svg(values, width=300, threshold=10, threshold_label="radius"))
    line = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "threshold")
    assert 0 < float(line.get("x1")) < 300
    assert max(float(t.text) for t in _texts(root, "xtick")) >= 10
    assert _texts(root, "threshold-label")[0].text == "radius 10"
    root = _parse(histogram_svg([0.1, 0.2, 0.3], threshold={"8-32 px": 0.62, "> 32 px": 0.55}))
    labels = sorted(t.text for t in _texts(root, "threshold-label"))
    assert labels == ["8-32 px 0.62", "> 32 px 0.55"]
    ys = {t.get("y") for t in _texts(root, "threshold-label")}
    assert len(ys) == 2  # stacked, not drawn over each other


def test_histogram_keeps_its_old_call_and_empty_input():
    svg = histogram_svg([1.0, 2.0, 2.5], 30, 480, 140, "old style")
    assert svg.startswith("<svg") and "old style" in svg
    assert 'class="threshold"' not in svg
    assert "no values" in histogram_svg([None, float("nan")], label="x")
    _parse(histogram_svg([5.0] * 10, label="one value"))  # a zero-width range still draws


def test_limited_gallery_shows_the_first_n_and_links_a_full_listing(tmp_path: Path):
    run = tmp_path / "run"
    report_dir = run / "report"
    listing = run / "steps" / "02-dedup_images" / "groups.html"
    groups = [f"g{i:02d}" for i in range(10)]
    rows = [(g, f"{g}-kept", f"{g}-member{j}", "phash 0.9") for g in groups for j in range(2)]
    html = limited_gallery(
        groups,
        lambda g: f'<div class="group">{g}</div>',
        limit=3,
        listing_path=listing,
        listing_rows=rows,
        listing_header=["group", "kept", "member", "evidence"],
        report_dir=report_dir,
        what="duplicate groups",
    )
    assert html.count('class="group"') == 3
    assert "g00" in html and "g02" in html and "g03" not in html
    assert "and 7 more duplicate groups" in html and "the first 3 of 10" in html
    assert 'href="../steps/02-dedup_images/groups.html"' in html
    assert 'href="../steps/02-dedup_images/groups.csv"' in html
    # the links resolve from the report folder to files that list every group
    assert (report_dir / "../steps/02-dedup_images/groups.html").resolve() == listing.resolve()
    page = listing.read_text(encoding="utf-8")
    assert all(f"{g}-member1" in page for g in groups)
    with listing.with_suffix(".csv").open(newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["group", "kept", "member", "evidence"] and len(table) == 1 + len(rows)


def test_limited_gallery_without_overflow_has_no_more_text(tmp_path: Path):
    html = limited_gallery(
        ["a", "b"],
        lambda g: f"<p>{g}</p>",
        limit=5,
        listing_path=tmp_path / "steps" / "01-x" / "all.html",
        listing_rows=[("a",), ("b",)],
        listing_header=["group"],
        report_dir=tmp_path / "report",
    )
    assert html == "<p>a</p><p>b</p>"
    assert (tmp_path / "steps" / "01-x" / "all.html").exists()
    assert more_link(5, 5, tmp_path / "x.html", tmp_path, "groups") == ""


def test_listing_escapes_its_cells(tmp_path: Path):
    path, csv_path = write_listing(tmp_path / "l.html", [("<b>", None)], ["id", "note"], "t")
    page = path.read_text(encoding="utf-8")
    assert "&lt;b&gt;" in page and "<b>" not in page.split("<body>")[1]
    assert csv_path.read_text(encoding="utf-8").splitlines() == ["id,note", "<b>,"]
