#!/usr/bin/env python3
"""Each kernel of one training step of `alexnet bench-train`, from Nsight Compute's CSV.

Run the benchmark under ncu with one metric, clocks and caches left alone, for a few steps:

    ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \\
        --log-file ncu.csv alexnet bench-train ... --steps 2 --warmup 2 --profile-steps 0
    python3 benches/ncu_step.py ncu.csv

A step starts with its two dropout-mask kernels, so the last step is everything from the last
pair of `dropout_mask` launches on. Prints its total GPU time first (one line), then every
kernel in launch order, then the kernels grouped by name, largest first. Kernel times add up
to the GPU's busy time; the step's wall time beyond it is the GPU waiting for the host.
"""

import csv
import sys
from collections import defaultdict

UNITS_MS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0,
            "msecond": 1.0, "s": 1e3, "second": 1e3}


def kernels(path):
    """(launch id, kernel name, ms) of every profiled kernel, in launch order."""
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    rows = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = UNITS_MS.get(r["Metric Unit"])
        if scale is None:
            raise SystemExit(f"unknown time unit {r['Metric Unit']!r} in {path}")
        rows.append((int(r["ID"]), r["Kernel Name"], float(r["Metric Value"].replace(",", "")) * scale))
    rows.sort()
    return rows


def short(name):
    """A kernel's name without its template and parameter lists."""
    return name.split("(")[0].split("<")[0].removeprefix("void ")[:70]


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rows = kernels(sys.argv[1])
    starts = [i for i, (_, name, _) in enumerate(rows) if name.startswith("dropout_mask")]
    if len(starts) < 2:
        print(f"FAILED: {len(rows)} kernels and no complete step (no dropout_mask pair)")
        return
    step = rows[starts[-2]:]
    print(f"{sum(ms for *_, ms in step):.2f} ms in {len(step)} kernels")
    print("in launch order (ms):")
    for _, name, ms in step:
        print(f"{ms:8.3f}  {name[:120]}")
    by_name = defaultdict(lambda: [0.0, 0])
    for _, name, ms in step:
        by_name[short(name)][0] += ms
        by_name[short(name)][1] += 1
    print("by kernel (ms, launches):")
    for name, (ms, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0]):
        print(f"{ms:8.3f} {count:4d}  {name}")


if __name__ == "__main__":
    main()
