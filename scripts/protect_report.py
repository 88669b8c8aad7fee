"""Copy a protect-loop run's figures into reports/protect/: compare.json, the galleries and an
NN1/NN2 histogram PNG (one line per model).

    .venv/bin/python scripts/protect_report.py /tmp/protect_quick reports/protect/quick
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(run_dir: str, out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (step,) = [p for p in (run / "steps").iterdir() if p.name.endswith("-compare")]
    data = json.loads((step / "compare.json").read_text())
    shutil.copy(step / "compare.json", out / "compare.json")
    for name in data["galleries"].values():
        if name:
            shutil.copy(step / name, out / name)
    fig, ax = plt.subplots(figsize=(6, 3))
    for label, m in data["models"].items():
        edges, counts = m["nn_ratio_histogram"]["edges"], m["nn_ratio_histogram"]["counts"]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        ax.plot(centres, [c / max(sum(counts), 1) for c in counts], label=label, marker=".")
    ax.axvline(1 / 3, color="grey", ls="--", lw=1)
    ax.set_xlabel("NN1/NN2 (pixel, vs distinct training digits)")
    ax.set_ylabel("share of generations")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "nn_ratio_hist.png", dpi=110)
    stats = json.loads((run / "stats.json").read_text())
    summary = {
        s["step"] + (f"-{s['id']}" if s.get("id") else ""): s["seconds"] for s in stats["steps"]
    }
    (out / "step_seconds.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
