#!/usr/bin/env python3
"""PyTorch reference for `alexnet bench-train`: the same network and SGD step in torch.nn.

The network is the paper's single-tower AlexNet exactly as `src/model` builds it (conv1 with
padding 2 for 224 inputs, LRN k=2 n=5 beta=0.75 and the paper's alpha=1e-4, which PyTorch
spells alpha=5e-4 because it divides by n), SGD with momentum 0.9 and weight decay 5e-4.
Inputs are uint8 crops already on the GPU, converted and mean-subtracted there, so this is an
upper bound for PyTorch (no data loading at all).

Prints one JSON line per precision mode:
  fp32   TF32 off for matmuls and convolutions (pure fp32, as dfdx computes)
  tf32   PyTorch's default for convolutions (cuDNN may use TF32 tensor cores)
  bf16   bf16 autocast with channels_last tensors (PyTorch's fastest setting here)

Usage: python3 benches/pytorch_alexnet.py [--batch-size 128] [--steps 20] [--classes 1000]

`alexnet(classes, lrn)` is also the module a checkpoint of `alexnet train` loads into:
    state = safetensors.torch.load_file("RUN/checkpoints/step-....safetensors")
    model = alexnet(1000, lrn=True)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("momentum.")})
Inputs are RGB crops on the 0..255 scale minus the training mean image (mean.npy), NCHW.
"""

import argparse
import json
import time
from collections import OrderedDict

import torch
import torch.nn as nn


def alexnet(classes: int, lrn: bool) -> nn.Sequential:
    def norm():
        return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if lrn else nn.Identity()

    features = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4, padding=2), nn.ReLU(inplace=True), norm(),   # 0, 1, 2
        nn.MaxPool2d(3, 2),                                                          # 3
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), norm(),             # 4, 5, 6
        nn.MaxPool2d(3, 2),                                                          # 7
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),                    # 8, 9
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),                    # 10, 11
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),                    # 12, 13
        nn.MaxPool2d(3, 2),                                                          # 14
    )
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),       # 0, 1, 2
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),              # 3, 4, 5
        nn.Linear(4096, classes),                                                   # 6
    )
    # Named like torchvision's AlexNet, so state_dict keys are features.N.* / classifier.N.*,
    # the names `alexnet train` writes into its safetensors checkpoints.
    return nn.Sequential(
        OrderedDict([("features", features), ("flatten", nn.Flatten()), ("classifier", classifier)])
    )


def bench(mode: str, args) -> dict:
    if mode not in ("fp32", "tf32", "bf16"):
        raise SystemExit(f"unknown mode {mode!r}: use fp32, tf32 or bf16")
    tf32 = mode != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = alexnet(args.classes, not args.no_lrn).to(dev)
    bf16 = mode == "bf16"
    if bf16:
        # PyTorch's fastest setting for convolutions: bf16 autocast on NHWC tensors.
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    b = args.batch_size
    pixels = torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, device=dev)
    mean = torch.full((1, 3, 224, 224), 118.0, device=dev)
    labels = torch.randint(0, args.classes, (b,), device=dev)

    if bf16:
        pixels = pixels.contiguous(memory_format=torch.channels_last)

    def step():
        x = pixels.float() - mean
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "impl": "pytorch",
        "mode": mode,
        "lrn": not args.no_lrn,
        "batch_size": b,
        "steps": args.steps,
        "images_per_sec": b * args.steps / seconds,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--no-lrn", action="store_true", help="leave out the two LRN layers")
    p.add_argument("--modes", default="fp32,tf32,bf16")
    p.add_argument("--save-checkpoint", metavar="PATH",
                   help="only write a freshly initialised model's state_dict as safetensors and exit "
                        "(to check that `alexnet evaluate --checkpoint PATH` reads PyTorch's files)")
    args = p.parse_args()
    if args.save_checkpoint:
        # Imported here so that the benchmark itself runs where the package is missing.
        from safetensors.torch import save_file
        torch.manual_seed(0)
        state = alexnet(args.classes, not args.no_lrn).state_dict()
        save_file({name: t.contiguous() for name, t in state.items()}, args.save_checkpoint)
        return
    for mode in args.modes.split(","):
        print(json.dumps(bench(mode, args)), flush=True)


if __name__ == "__main__":
    main()
