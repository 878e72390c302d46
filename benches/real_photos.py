#!/usr/bin/env python3
"""`make bench-photos`: `alexnet preprocess` against the Pillow reference on real photographs.

The corpus is built here, never committed: the JPEG photographs of two Debian wallpaper
packages (fetched with `apt-get download`, unpacked with `dpkg-deb`), plus re-encodings of
each with Pillow at ImageNet-like and other sizes — baseline, progressive (a fifth), grayscale
(a fifth) and one CMYK — so that it holds what cameras and the web write. Then, on the same
files, with the same number of workers, interleaved, for REPEATS runs:

  * wall time of the whole process and CPU seconds per image (user + system, children
    included), for `alexnet preprocess` and for `benches/pillow_reference.py run`;
  * peak RSS of `alexnet preprocess`;
  * where our time goes (`alexnet preprocess --profile`);
  * parity: per-image mean absolute difference of our stored pixels to Pillow's.

Prints a table of medians and ratios last. Environment: JOBS (2), REPEATS (3), BENCH_DATA.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from PIL import Image

from bench_common import BIN, DATA, JOBS, REPEATS, SIZE, parity, pillow_args, sh

PACKAGES = ["mate-backgrounds", "ukui-wallpapers"]
# Shorter sides of the re-encodings: mostly ImageNet's (333-500), some small, some large.
SIDES = [100, 333, 375, 500, 768, 1200]
CLASSES = 4


def fetch_originals(debs, extracted):
    """The JPEG photographs in the packages, sorted by name."""
    os.makedirs(debs, exist_ok=True)
    for package in PACKAGES:
        if not any(f.startswith(package + "_") for f in os.listdir(debs)):
            if shutil.which("apt-get") is None:
                sys.exit("bench-photos needs apt-get (Debian/Ubuntu) to fetch " + package)
            sh(["apt-get", "download", "-qq", package], cwd=debs)
    for deb in sorted(os.listdir(debs)):
        if deb.endswith(".deb"):
            sh(["dpkg-deb", "-x", os.path.join(debs, deb), extracted])
    found = []
    for dirpath, _, names in os.walk(extracted):
        for name in names:
            path = os.path.join(dirpath, name)
            if name.lower().endswith((".jpg", ".jpeg")) and os.path.getsize(path) > 0:
                found.append(path)
    return sorted(found, key=os.path.basename)


def start_corpus(corpus, classes, first_wnid):
    """An empty ImageNet layout in `corpus` (train/ and val/ with one folder per class) and
    the photographs to cut it from: (originals, wnids)."""
    shutil.rmtree(corpus, ignore_errors=True)
    originals = fetch_originals(os.path.join(DATA, "debs"), os.path.join(DATA, "debs-extracted"))
    if not originals:
        sys.exit("no JPEG photographs found in " + ", ".join(PACKAGES))
    wnids = [f"n{first_wnid + c:08d}" for c in range(classes)]
    for split in ("train", "val"):
        for wnid in wnids:
            os.makedirs(os.path.join(corpus, split, wnid))
    return originals, wnids


def build_corpus(corpus):
    """ImageNet layout: train/<wnid>/*.JPEG (the photographs and their re-encodings) and
    val/<wnid>/ (one re-encoding per photograph)."""
    if os.path.exists(os.path.join(corpus, "DONE")):
        return
    originals, wnids = start_corpus(corpus, CLASSES, 9000000)
    k = 0
    for i, path in enumerate(originals):
        stem = os.path.splitext(os.path.basename(path))[0].replace(" ", "_")
        wnid = wnids[i % CLASSES]
        shutil.copy(path, os.path.join(corpus, "train", wnid, f"{stem}_orig.JPEG"))
        with Image.open(path) as img:
            img = img.convert("RGB")
            for side in SIDES:
                w, h = img.size
                scale = side / min(w, h)
                if scale >= 1:
                    continue
                small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                   Image.LANCZOS)
                k += 1
                options = {"quality": 90}
                kind = "base"
                if k % 5 == 0:
                    options["progressive"] = True
                    kind = "prog"
                elif k % 5 == 2:
                    small = small.convert("L")
                    kind = "gray"
                split = "val" if side == 375 else "train"
                out = os.path.join(corpus, split, wnid, f"{stem}_{side}_{kind}.JPEG")
                small.save(out, "JPEG", **options)
            if i == 0:
                img.convert("CMYK").save(os.path.join(corpus, "train", wnid, f"{stem}_cmyk.JPEG"),
                                         "JPEG", quality=90)
    open(os.path.join(corpus, "DONE"), "w").close()


def describe(corpus):
    sizes, kinds = [], {"progressive": 0, "grayscale": 0, "cmyk": 0}
    for dirpath, _, names in os.walk(corpus):
        for name in names:
            if name.endswith(".JPEG"):
                with Image.open(os.path.join(dirpath, name)) as img:
                    sizes.append(img.size)
                    kinds["progressive"] += bool(img.info.get("progressive"))
                    kinds["grayscale"] += img.mode == "L"
                    kinds["cmyk"] += img.mode == "CMYK"
    pixels = sorted(w * h for w, h in sizes)
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    largest = max(sizes, key=lambda s: s[0] * s[1])
    return (f"{len(sizes)} JPEGs from {smallest[0]}x{smallest[1]} to {largest[0]}x{largest[1]} "
            f"(median {statistics.median(pixels) / 1e6:.2f} MP); {kinds['progressive']} "
            f"progressive, {kinds['grayscale']} grayscale, {kinds['cmyk']} CMYK")


def timed(args):
    """Runs a command; returns (wall seconds, CPU seconds, peak RSS in MiB, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait4 gives the child's own usage, its waited-for children (Pillow's pool) included.
    stdout = proc.stdout.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout + stderr


def ours(corpus, out, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    return timed([BIN, "preprocess", "--input", corpus, "--output", out, "--jobs", str(JOBS),
                  *extra])


def pillow(corpus, raw):
    return timed(pillow_args(corpus, raw))


def main():
    corpus = os.path.join(DATA, "photos")
    build_corpus(corpus)
    print("corpus:", describe(corpus))
    out = os.path.join(DATA, "out-photos")
    raw = os.path.join(DATA, "pillow-photos.raw")
    runs = {"alexnet": [], "pillow": []}
    images = None
    for _ in range(REPEATS):  # interleaved, so both see the same machine noise
        runs["alexnet"].append(ours(corpus, out))
        runs["pillow"].append(pillow(corpus, raw))
        images = json.loads(runs["pillow"][-1][3].strip().splitlines()[-1])["images"]
    os.remove(raw)
    profile = ours(corpus, out, ["--profile"])[3]
    match = parity(corpus, out)

    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    print("\nwhere alexnet's time goes (--profile, one run):")
    print("\n".join(line for line in profile.splitlines() if line.startswith("  ")))
    print(f"\nreal photographs to {SIZE}x{SIZE}, {JOBS} workers each, median of {REPEATS} "
          f"interleaved runs (whole process: start-up, scanning, writing)")
    print(f"{'':<8} {'img/s':>8} {'wall s':>8} {'CPU s/img':>10} {'peak RSS':>9}")
    for name, (wall, cpu, rss) in med.items():
        rss_text = f"{rss:.0f} MiB" if name == "alexnet" else "-"
        print(f"{name:<8} {images / wall:>8.1f} {wall:>8.2f} {cpu / images * 1e3:>8.1f}ms "
              f"{rss_text:>9}")
    print(f"ratio    {med['pillow'][0] / med['alexnet'][0]:>7.2f}x wall, "
          f"{med['pillow'][1] / med['alexnet'][1]:.2f}x CPU")
    print(f"parity: mean abs diff per image, median {match['mean_abs_diff_median']:.3f}, "
          f"max {match['mean_abs_diff_max']:.3f} levels of 255 "
          f"({match['images_under_1_level']:.1%} of images under 1 level)")


if __name__ == "__main__":
    main()
