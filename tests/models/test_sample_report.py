"""``curate sample`` writes a self-contained report beside its PNGs: the settings, a grid of the
first samples with a full listing when there are more, and with ``--amg`` what AMG did."""

from __future__ import annotations

import csv
import json
import re

import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli.model import sample
from curate.report import png_data_uri

SRC = re.compile(r'<img src="(data:image/png;base64,[^"]+)"')


def _sample(args):
    result = CliRunner().invoke(sample, [*args, "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result


def _samples_section(html: str) -> str:
    start = html.index("<h2>Samples</h2>")
    end = html.find("<section>", start)
    return html[start : end if end > 0 else len(html)]


def test_the_report_shows_the_settings_and_the_first_samples_with_a_full_listing(tmp_path):
    out = tmp_path / "s"
    _sample(["digits-tiny", "--num", "70", "--steps", "2", "--method", "euler", "--seed", "5",
             "--out", str(out)])  # fmt: skip
    html = (out / "report" / "index.html").read_text()
    assert "<title>curate sample</title>" in html and "http" not in html.split("<body>")[1]
    for cell in ("<td>sampler</td><td>euler</td>", "<td>steps</td><td>2</td>",
                 "<td>seed</td><td>5</td>", "<td>guidance scale</td><td>1.0</td>",
                 "<td>model</td><td>digits-tiny</td>", "<td>samples</td><td>70</td>"):  # fmt: skip
        assert cell in html
    uris = SRC.findall(_samples_section(html))
    assert len(uris) == 64  # the first 64 of 70 ...
    for i in (0, 63):  # ... in order, and they are the PNGs written
        with Image.open(out / f"{i:06d}.png") as img:
            assert uris[i] == png_data_uri(img)
    assert "and 6 more samples" in html and 'href="samples.html"' in html
    with (out / "report" / "samples.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "file", "prompt"] and len(rows) == 71
    assert rows[70][:2] == ["69", "000069.png"]


def test_amg_records_are_summarised_per_sample_on_the_same_page(digits_runs, tmp_path):
    run = digits_runs(32)
    out = tmp_path / "s"
    _sample(["digits-tiny", "--num", "5", "--steps", "4", "--out", str(out), "--amg",
             "--amg-train", str(run), "--amg-threshold", "always"])  # fmt: skip
    html = (out / "report" / "index.html").read_text()
    records = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    guided = sum(r["amg_active_steps"] > 0 for r in records)
    assert guided == 5  # the gate is always open: every sample, every step
    section = _samples_section(html)
    assert f"AMG guided {guided} of 5 samples" in section and "<svg" in section
    assert "<td>dissimilarity (sim)</td><td>5</td>" in section  # unconditional: sim only
    assert "<td>despecification (spe)</td><td>0</td>" in section
    for r in records:
        assert f"#{r['index']} | AMG: {r['amg_active_steps']} guided steps (sim)" in section
    assert "threshold=always" in section  # the AMG settings
    assert "similarity trajectories" in html  # AMG's own section, same page
    assert html.index("<h2>Samples</h2>") < html.index("<h2>Anti-memorization guidance</h2>")

    # a plain rerun into the folder replaces the page: no stale AMG section
    _sample(["digits-tiny", "--num", "3", "--steps", "2", "--out", str(out)])
    html = (out / "report" / "index.html").read_text()
    assert "Anti-memorization guidance" not in html and "AMG:" not in html
    assert len(SRC.findall(html)) == 3


@pytest.mark.parametrize("limit", [0, 2])
def test_write_sample_report_without_overflow_has_no_more_link(tmp_path, limit):
    from curate.models.sample_report import write_sample_report

    for i in range(2):
        Image.new("L", (4, 4), 40 * i).save(tmp_path / f"{i:06d}.png")
    records = [{"index": i, "file": f"{i:06d}.png", "prompt": f"p{i}"} for i in range(2)]
    write_sample_report(tmp_path, records, {"sampler": "ddim"}, limit=limit)
    html = (tmp_path / "report" / "index.html").read_text()
    assert len(SRC.findall(html)) == limit
    assert ("more samples" in html) == (limit < 2)
    assert "#1: p1" in html or limit == 0
