"""Throughput of ``votemi batch``: cases per minute and peak memory per worker, for 1 and 2 local workers.

Runs the command line as a user would, on the sarcoma/ cases of ../shared/data (CT and MRI crops) and the
brain cases of its cases.tsv, each time into a fresh output folder (no case skipped), and prints a Markdown
table. Also prints peak memory against voxels per case, which sets the memory limit per worker
(``VoteMILib.batch.BYTES_PER_VOXEL``).

    PYTHONPATH=$PWD/VoteMI python Testing/bench_batch.py [--cases 18] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def case_table(folder, count: int) -> str:
    """A CSV of the first ``count`` cases: sarcoma/ and the main cases.tsv, alternating."""
    from VoteMILib.datasets import discover_cases

    sarcoma, main = discover_cases([os.path.join(DATA, "sarcoma")]), discover_cases([DATA])
    mixed = [case for pair in zip(sarcoma, main) for case in pair] + sarcoma[len(main):]
    path = os.path.join(folder, "cases.csv")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("case,image\n")
        for case in mixed[:count]:
            handle.write(f"{case.name},{case.image}\n")
    return path


def run(table: str, workers: int, folder: str) -> dict:
    out = os.path.join(folder, f"out-{workers}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "VoteMILib.cli", "batch", table, "--out", out, "--workers", str(workers)],
                   check=False, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    with open(os.path.join(out, "summary.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    peaks = {}
    for record in records:
        peaks[record["worker_pid"]] = max(peaks.get(record["worker_pid"], 0.0), record["peak_memory_mb"])
    return {"workers": workers, "cases": len(records), "failed": sum(r["status"] != "ok" for r in records),
            "seconds": seconds, "per_min": len(records) / seconds * 60,
            "task_s": sum(r["seconds"] for r in records) / len(records), "peak_mb": max(peaks.values()),
            "records": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=18)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    from VoteMILib.batch import estimate_voxels
    from VoteMILib.datasets import Case

    with tempfile.TemporaryDirectory(prefix="votemi-bench-batch-") as folder:
        table = case_table(folder, args.cases)
        rows = [run(table, int(n), folder) for n in args.workers.split(",")]
    print(f"{os.cpu_count()} cores; {rows[0]['cases']} cases (sarcoma/ and cases.tsv of ../shared/data); wall time "
          "includes starting the cluster\n")
    print("| workers | cases | failed | wall time (s) | cases/min | mean time per case (s) | peak memory per worker "
          "(MiB) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['workers']} | {row['cases']} | {row['failed']} | {row['seconds']:.1f} | {row['per_min']:.1f} | "
              f"{row['task_s']:.2f} | {row['peak_mb']:.0f} |")
    print("\n| case | voxels (M) | worker peak after it (MiB) |\n|---|---|---|")
    for record in sorted(rows[0]["records"], key=lambda r: r["peak_memory_mb"]):
        voxels = estimate_voxels(Case(record["case"], record["image"]))
        print(f"| {record['case']} | {voxels / 1e6:.1f} | {record['peak_memory_mb']:.0f} |")


if __name__ == "__main__":
    main()
