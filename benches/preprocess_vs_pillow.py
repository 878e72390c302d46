#!/usr/bin/env python3
"""`make bench-pillow`: preprocessing throughput of `alexnet preprocess` against the Pillow
reference (benches/pillow_reference.py) with the same number of workers, in the same run, on
(a) the sample dataset and (b) large generated photos; then how close our stored pixels are to
Pillow's. Prints a table of medians and ratios.
"""

import json
import os
import shutil
import statistics
import time

from bench_common import BIN, DATA, JOBS, REPEATS, SIZE, parity, pillow_args, sh


DATASETS = {
    # The default sample: shorter sides 64-800 px, with every edge case.
    "sample": [],
    # Large photos: shorter sides 2000-3000 px, longer sides mostly up to ~6000 (the generator
    # pins one 3:1 image), no edge cases.
    "large": ["--classes", "4", "--train-per-class", "6", "--val-per-class", "2",
              "--min-side", "2000", "--max-side", "3000", "--no-edge-cases"],
}


def ensure_dataset(name, flags):
    path = os.path.join(DATA, name)
    if not os.path.exists(os.path.join(path, "LOC_synset_mapping.txt")):
        shutil.rmtree(path, ignore_errors=True)
        sh([BIN, "sample", "--out", path] + flags)
    return path


def time_ours(src, out):
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    sh([BIN, "preprocess", "--input", src, "--output", out, "--jobs", str(JOBS)])
    return time.perf_counter() - started


def time_pillow(src, raw):
    started = time.perf_counter()
    result = sh(pillow_args(src, raw))
    elapsed = time.perf_counter() - started
    return elapsed, json.loads(result.stdout.strip().splitlines()[-1])


def main():
    os.makedirs(DATA, exist_ok=True)
    rows = []
    for name, flags in DATASETS.items():
        src = ensure_dataset(name, flags)
        out = os.path.join(DATA, f"out-{name}")
        raw = os.path.join(DATA, f"pillow-{name}.raw")
        ours, pillow = [], []
        for _ in range(REPEATS):  # interleaved, so both see the same machine noise
            ours.append(time_ours(src, out))
            elapsed, info = time_pillow(src, raw)
            pillow.append(elapsed)
        n = info["images"]
        ours_rate = n / statistics.median(ours)
        pillow_rate = n / statistics.median(pillow)
        rows.append((name, n, ours_rate, pillow_rate, parity(src, out)))
        os.remove(raw)

    print(f"\npreprocessing to {SIZE}x{SIZE}, {JOBS} workers each, median of {REPEATS} runs "
          f"(wall time including start-up and writing)")
    print(f"{'dataset':<8} {'images':>7} {'alexnet img/s':>14} {'Pillow img/s':>13} {'ratio':>6}"
          f" {'MAD median':>11} {'MAD max':>8} {'<1 level':>9}")
    for name, n, ours_rate, pillow_rate, p in rows:
        print(f"{name:<8} {n:>7} {ours_rate:>14.1f} {pillow_rate:>13.1f} "
              f"{ours_rate / pillow_rate:>5.2f}x {p['mean_abs_diff_median']:>11.3f} "
              f"{p['mean_abs_diff_max']:>8.3f} {p['images_under_1_level']:>8.1%}")
    print("MAD: per-image mean absolute difference (levels of 255) between our stored pixels "
          "and Pillow's Resize(256)+CenterCrop(256) of the same file.")


if __name__ == "__main__":
    main()
