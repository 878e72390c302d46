#!/usr/bin/env python3
"""The reference we measure `alexnet preprocess` against: Pillow with torchvision's semantics.

For every image: PIL.Image.open -> convert("RGB") -> Resize(size) -> CenterCrop(size), written
as raw bytes, in a multiprocessing pool with the same number of workers as our --jobs. This is
what torchvision's ImageFolder + transforms do, without the torch dependency:

  * Resize(size) on a PIL image: shorter side -> size, longer -> int(size * long / short),
    Image.resize(..., BILINEAR), which in Pillow is an antialiased triangle filter;
  * CenterCrop(size): top = int(round((h - size) / 2.0)), left likewise.

Modes:
  run      preprocess a folder, print one JSON line with images/s (the benchmark)
  compare  compare `alexnet export` output with Pillow's result for the same source files
"""

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
import time

from PIL import Image


def torchvision_resize_center_crop(img, size):
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def load_stored(path, size):
    with open(path, "rb") as f:
        img = Image.open(f)
        img = img.convert("RGB")
    return torchvision_resize_center_crop(img, size)


def list_inputs(root):
    """train/<wnid>/* then val/** (every file but the label CSV), sorted like ours."""
    files = []
    for split in ("train", "val"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, split)):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.startswith(".") and name != "LOC_val_solution.csv":
                    files.append(os.path.join(dirpath, name))
    return files


def _work(args):
    path, size = args
    try:
        return load_stored(path, size).tobytes()
    except Exception:  # a rejected input: Pillow raises on truncated and empty files
        return None


def run(root, out, jobs, size):
    started = time.perf_counter()
    files = list_inputs(root)
    stored = rejected = 0
    with mp.Pool(jobs) as pool, open(out, "wb") as sink:
        for data in pool.imap(_work, [(f, size) for f in files], chunksize=8):
            if data is None:
                rejected += 1
            else:
                sink.write(data)
                stored += 1
        sink.flush()
        os.fsync(sink.fileno())
    elapsed = time.perf_counter() - started
    print(json.dumps({"images": len(files), "stored": stored, "rejected": rejected,
                      "seconds": elapsed, "images_per_sec": len(files) / elapsed}))


def compare(root, export_dir, size):
    """Mean absolute difference per image between our stored PNGs and Pillow's pipeline."""
    diffs = []
    worst = (0.0, "")
    with open(os.path.join(export_dir, "index.csv"), newline="") as f:
        for row in csv.DictReader(f):
            ours = Image.open(os.path.join(export_dir, row["index"] + ".png")).convert("RGB")
            ref = load_stored(os.path.join(root, row["source_path"]), size)
            a, b = ours.tobytes(), ref.tobytes()
            mad = sum(abs(x - y) for x, y in zip(a, b)) / len(a)
            diffs.append(mad)
            worst = max(worst, (mad, row["source_path"]))
    diffs.sort()
    print(json.dumps({
        "images": len(diffs),
        "mean_abs_diff_median": diffs[len(diffs) // 2],
        "mean_abs_diff_mean": sum(diffs) / len(diffs),
        "mean_abs_diff_max": worst[0],
        "worst_image": worst[1],
        "images_under_1_level": sum(d < 1.0 for d in diffs) / len(diffs),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True, help="raw u8 HWC records are written here")
    r.add_argument("--jobs", type=int, default=os.cpu_count())
    r.add_argument("--size", type=int, default=256)
    c = sub.add_parser("compare")
    c.add_argument("--input", required=True, help="the source folder given to alexnet preprocess")
    c.add_argument("--export", required=True, help="a split folder written by alexnet export")
    c.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    if args.mode == "run":
        run(args.input, args.output, args.jobs, args.size)
    else:
        compare(args.input, args.export, args.size)


if __name__ == "__main__":
    sys.exit(main())
