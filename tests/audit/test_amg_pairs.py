"""The AMG audit's report shows each seed's plain and guided samples side by side (plain | AMG |
nearest training image), the plain run's worst copies first."""

from __future__ import annotations

import re

import polars as pl
import pytest
import torch
from click.testing import CliRunner

from curate.audit.report import amg_pairs_html
from curate.audit.scoring import audit_samples
from curate.audit.settings import AuditSettings
from curate.core.images import tensor_to_pil
from curate.io.training import TrainingSet
from curate.report import png_data_uri

SRC = re.compile(r'src="(data:image/png;base64,[^"]+)"')


def test_pairs_follow_the_plain_ranking_and_keep_each_seed_together(digits):
    train = TrainingSet.from_tensor(digits[:40], [f"t{i}" for i in range(40)])
    plain_x = torch.cat([digits[100:104], digits[[5, 9]]])  # plain 4 and 5 are copies
    guided_x = digits[200:206]  # AMG made something else from every seed
    plain = audit_samples(plain_x, train, AuditSettings(num_samples=6))
    guided = audit_samples(guided_x, train, AuditSettings(num_samples=6))
    amg_samples = pl.DataFrame({"sample": list(range(6)), "amg_active_steps": [0, 1, 2, 3, 4, 5]})
    html = amg_pairs_html(plain, guided, train, amg_samples, max_rows=4)

    order = plain.per_sample.sort(["nn_ratio", "index"])["index"].to_list()[:4]
    assert set(order[:2]) == {4, 5}  # the copies first
    by_id = {s: i for i, s in enumerate(train.sample_ids)}
    expected = []
    for i in order:
        nn = plain.per_sample["nn_sample_id"][i]
        for img in (plain_x[i], guided_x[i], train.images[by_id[nn]]):
            expected.append(png_data_uri(tensor_to_pil(img[None])[0]))
    assert SRC.findall(html) == expected  # plain i | AMG i | plain i's nearest, worst first
    captions = re.findall(r"<div>(plain \d+|AMG \d+)", html)
    assert captions == [c for i in order for c in (f"plain {i}", f"AMG {i}")]
    assert "guided at 4 steps" in html and "nearest training image t5" in html


def test_mismatched_runs_are_refused(digits):
    train = TrainingSet.from_tensor(digits[:20])
    a = audit_samples(digits[100:104], train, AuditSettings(num_samples=4))
    b = audit_samples(digits[100:103], train, AuditSettings(num_samples=3))
    with pytest.raises(ValueError, match="guided"):
        amg_pairs_html(a, b, train)


def test_the_amg_audit_report_has_the_side_by_side_section(digits_runs, tmp_path):
    from curate.cli.audit import audit

    run = digits_runs(32)
    out = tmp_path / "audit"
    args = ["--oracle", "--train", str(run), "--resolution", "8", "--out", str(out)]
    args += ["--num-samples", "6", "--steps", "6", "--device", "cpu", "--quiet"]
    args += ["--amg", "--amg-threshold", "always", "--amg-scales", "0,0,5"]
    result = CliRunner().invoke(audit, args)
    assert result.exit_code == 0, result.output
    html = (out / "report" / "index.html").read_text()
    assert "Plain vs AMG samples (same seeds)" in html
    section = html[html.index("Plain vs AMG samples (same seeds)") :]
    plain = pl.read_parquet(out / "samples.parquet").sort(["nn_ratio", "index"])
    first = plain["index"][0]
    assert re.findall(r"<div>(plain \d+|AMG \d+)", section)[:2] == [
        f"plain {first}",
        f"AMG {first}",
    ]
    assert len(SRC.findall(section)) == 3 * 6
