"""Median throughput of a `python -m internlm` run from its metrics CSV (steps after warm-up).

    python bench/summarize_run.py <run folder> [--skip 4]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--skip", type=int, default=4, help="warm-up steps left out (compilation)")
    args = parser.parse_args()
    rows = list(csv.DictReader((args.run_dir / "metrics" / "metrics.csv").open()))
    rows = [r for r in rows if r.get("perf/tokens_per_device_per_s") and int(r["step"]) > args.skip]

    def median(key: str) -> float | None:
        values = [float(r[key]) for r in rows if r.get(key)]
        return statistics.median(values) if values else None

    summary = {
        "steps": len(rows),
        "tokens_per_device_per_s": median("perf/tokens_per_device_per_s"),
        "mfu": median("perf/mfu"),
        "peak_memory_gib": max(float(r["perf/peak_memory_gib"]) for r in rows) if rows else None,
        "last_loss": float(rows[-1]["train/loss"]) if rows else None,
    }
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
