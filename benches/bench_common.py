"""What the preprocessing benchmarks (preprocess_vs_pillow.py, real_photos.py,
imagenet_like.py) share: where things are, the settings from the environment, and the Pillow
reference's commands."""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "alexnet")
DATA = os.environ.get("BENCH_DATA", os.path.join(ROOT, "bench-data"))
JOBS = int(os.environ.get("JOBS", "2"))
REPEATS = int(os.environ.get("REPEATS", "3"))
SIZE = 256
REFERENCE = os.path.join(ROOT, "benches", "pillow_reference.py")


def sh(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def pillow_args(src, raw):
    """The Pillow reference pipeline over `src`, writing its pixels to `raw`."""
    return [sys.executable, REFERENCE, "run", "--input", src, "--output", raw,
            "--jobs", str(JOBS), "--size", str(SIZE)]


def parity(src, out):
    """Per-image mean absolute difference of our stored training pixels (in `out`) to
    Pillow's for the same files: the reference's `compare` summary."""
    export = out + "-export"
    shutil.rmtree(export, ignore_errors=True)
    sh([BIN, "export", "--data", out, "--split", "train", "--out", export])
    result = sh([sys.executable, REFERENCE, "compare", "--input", src,
                 "--export", os.path.join(export, "train"), "--size", str(SIZE)])
    return json.loads(result.stdout.strip().splitlines()[-1])
