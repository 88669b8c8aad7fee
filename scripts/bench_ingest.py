"""Ingest throughput on the built-in data (rows/s), written to reports/ingest.json.

    .venv/bin/python scripts/bench_ingest.py

Measures ``curate.io.ingest.ingest`` end to end (open source, decode + validate + hash every
image, write the Arrow image store and table.parquet) on ``builtin:digits`` (1,797 tiny PNGs)
and ``builtin:photos`` (62 photos up to 256 px, with broken rows), best of 3 runs each.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    import datasets

    from curate.data.builtin import load_builtin
    from curate.io.ingest import IngestConfig, ingest

    datasets.disable_progress_bars()
    results = {}
    for name in ("digits", "photos"):
        load_builtin(name)  # build once so the timing is ingest, not dataset generation
        best = None
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                summary = ingest(
                    IngestConfig(name=f"builtin:{name}"), Path(tmp) / "run", quiet=True
                )
                seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
        results[f"builtin:{name}"] = {
            "rows": summary["rows"],
            "seconds_best_of_3": round(best, 3),
            "rows_per_second": round(summary["rows"] / best, 1),
        }
        print(name, results[f"builtin:{name}"])
    out = Path("reports/ingest.json")
    out.parent.mkdir(exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
