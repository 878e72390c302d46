#!/usr/bin/env python3
"""`make bench-imagenet`: how long preprocessing ImageNet takes, measured on a corpus composed
like it, beside the Pillow reference with the same number of workers.

ILSVRC-2012's training images are mostly baseline JPEGs of about 500x375 (500 px on the longer
side, mostly 333-375 on the shorter, landscape more often than portrait), with a few large photographs
(some over 10 MP), a few progressive and grayscale files and 22 CMYK ones. The corpus has that
shape, built here from the real photographs `make bench-photos` fetches (benches/real_photos.py),
never committed: IMAGES (4000) re-encodings of random crops of them, at Flickr-like JPEG
qualities (85-95):

  * 93%  baseline, 500 px on the longer side, 281-400 on the shorter
  *  2%  progressive, same sizes
  *  2%  grayscale, same sizes
  *  3%  large baseline, 1600-4000 px on the longer side (most decoded at 1/2 or 1/4 scale by us)
  *  2 files CMYK (0.002% in ImageNet; here so that the path is timed at all)

Then, interleaved for REPEATS runs: wall time and CPU time of `alexnet preprocess` and of the
Pillow reference, the same parity check as the other benchmarks, and the projection of the
1,281,167 training images of ILSVRC-2012 onto 16 and 64 cores from the measured rate per
worker (assuming it scales with the cores and the disk keeps up: the read rate it would need
is printed too). Environment: JOBS (2), REPEATS (3), IMAGES (4000), BENCH_DATA.
"""

import os
import random
import statistics
import sys

from PIL import Image

from bench_common import DATA, JOBS, REPEATS, SIZE, parity
from real_photos import ours, pillow, start_corpus

IMAGES = int(os.environ.get("IMAGES", "4000"))
CLASSES = 10
# One image in 25 goes to val/, as ImageNet's 50k val images are to its 1.28M training images.
VAL_EVERY = 25
IMAGENET_TRAIN = 1_281_167
PROJECTED_CORES = (16, 64)
# ILSVRC2012_img_train.tar: 147,897,477,120 bytes for the 1,281,167 images.
IMAGENET_MEAN_BYTES = 147_897_477_120 / IMAGENET_TRAIN


def kind_of(i):
    """What the i-th image is: the shares of the module comment, interleaved."""
    if i in (IMAGES // 3, 2 * IMAGES // 3):
        return "cmyk"
    return {0: "large", 1: "large", 2: "large", 10: "prog", 11: "prog", 20: "gray", 21: "gray"}.get(
        i % 100, "base")


def imagenet_size(rng):
    """(width, height) of an ordinary ImageNet photograph."""
    short = rng.choice([333, 334, 375, 375, 375, 375, 400, 281])
    return (500, short) if rng.random() < 0.75 else (short, 500)


def crop(img, rng, width, height):
    """A random crop of `img` with the aspect ratio width:height, from the target size to
    twice it (a photograph downscaled for the web keeps most of its detail), resized to
    (width, height); where the target does not fit, the largest crop, not enlarged."""
    w, h = img.size
    fit = min(w / width, h / height)
    scale = rng.uniform(min(fit, 1.0), min(fit, 2.0))
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    region = img.crop((left, top, left + cw, top + ch))
    if scale > 1.0:
        region = region.resize((width, height), Image.LANCZOS)
    return region


def build_corpus(corpus):
    """ImageNet's layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    if os.path.exists(os.path.join(corpus, "DONE")):
        return
    originals, wnids = start_corpus(corpus, CLASSES, 8000000)
    # Each photograph is decoded once, for every image cut from it.
    for source, path in enumerate(originals):
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
        for i in range(source, IMAGES, len(originals)):
            rng = random.Random(i)
            kind = kind_of(i)
            if kind == "large":
                longer = rng.randint(1600, 4000)
                w, h = longer, longer * 3 // 4
                img = crop(photo, rng, *((w, h) if photo.size[0] >= photo.size[1] else (h, w)))
            else:
                img = crop(photo, rng, *imagenet_size(rng))
            options = {"quality": rng.randint(85, 95)}
            if kind == "prog":
                options["progressive"] = True
            elif kind == "gray":
                img = img.convert("L")
            elif kind == "cmyk":
                img = img.convert("CMYK")
            split = "val" if i % VAL_EVERY == VAL_EVERY - 1 else "train"
            wnid = wnids[i % CLASSES]
            img.save(os.path.join(corpus, split, wnid, f"{wnid}_{i}_{kind}.JPEG"), "JPEG",
                     **options)
    open(os.path.join(corpus, "DONE"), "w").close()


def describe(corpus):
    counts, pixels, sizes = {}, [], []
    for dirpath, _, names in os.walk(corpus):
        for name in names:
            if name.endswith(".JPEG"):
                kind = name.rsplit("_", 1)[1][:-5]
                counts[kind] = counts.get(kind, 0) + 1
                path = os.path.join(dirpath, name)
                sizes.append(os.path.getsize(path))
                with Image.open(path) as img:
                    pixels.append(img.size[0] * img.size[1])
    mix = ", ".join(f"{counts[k]} {k}" for k in ("base", "prog", "gray", "large", "cmyk")
                    if k in counts)
    text = (f"{len(sizes)} JPEGs ({mix}); median {statistics.median(pixels) / 1e3:.0f} kpixels, "
            f"largest {max(pixels) / 1e6:.1f} MP; mean file {statistics.mean(sizes) / 1e3:.0f} kB")
    return text, statistics.mean(sizes)


def duration(images, rate):
    seconds = images / rate
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def main():
    corpus = os.path.join(DATA, f"imagenet-like-{IMAGES}")
    build_corpus(corpus)
    text, mean_bytes = describe(corpus)
    print("corpus:", text)
    out = os.path.join(DATA, "out-imagenet-like")
    raw = os.path.join(DATA, "pillow-imagenet-like.raw")
    runs = {"alexnet": [], "pillow": []}
    for _ in range(REPEATS):  # interleaved, so both see the same machine noise
        runs["alexnet"].append(ours(corpus, out))
        runs["pillow"].append(pillow(corpus, raw))
    os.remove(raw)
    match = parity(corpus, out)

    images = sum(1 for _, _, names in os.walk(corpus) for n in names if n.endswith(".JPEG"))
    med = {k: [statistics.median(r[i] for r in v) for i in range(2)] for k, v in runs.items()}
    print(f"\nImageNet-like JPEGs to {SIZE}x{SIZE}, {JOBS} workers each, median of {REPEATS} "
          f"interleaved runs (whole process: start-up, scanning, writing)")
    print(f"{'':<8} {'img/s':>8} {'wall s':>8} {'CPU ms/img':>11}   "
          + "   ".join(f"{IMAGENET_TRAIN:,} images on {c} cores" for c in PROJECTED_CORES))
    for name, (wall, cpu) in med.items():
        rate = images / wall
        per_worker = rate / JOBS
        projected = "   ".join(f"{duration(IMAGENET_TRAIN, per_worker * c):>27}"
                               for c in PROJECTED_CORES)
        print(f"{name:<8} {rate:>8.1f} {wall:>8.2f} {cpu / images * 1e3:>9.2f}ms   {projected}")
    ratio = med["pillow"][0] / med["alexnet"][0]
    print(f"ratio    {ratio:>7.2f}x wall, {med['pillow'][1] / med['alexnet'][1]:.2f}x CPU")
    rate = images / med["alexnet"][0] / JOBS
    print("input read rate the projection needs: "
          + ", ".join(f"{rate * c * mean_bytes / 1e6:.0f} MB/s on {c} cores"
                      for c in PROJECTED_CORES)
          + f" (at this corpus's mean file size; ImageNet's training files average "
          f"{IMAGENET_MEAN_BYTES / 1e3:.0f} kB)")
    print(f"parity: mean abs diff per image, median {match['mean_abs_diff_median']:.3f}, "
          f"max {match['mean_abs_diff_max']:.3f} levels of 255 "
          f"({match['images_under_1_level']:.1%} of images under 1 level)")


if __name__ == "__main__":
    main()
