#!/usr/bin/env python3
"""PyTorch reference for `alexnet bench-train`: the same network and SGD step in torch.nn.

The network is the paper's single-tower AlexNet exactly as `src/model` builds it (conv1 with
padding 2 for 224 inputs, LRN k=2 n=5 beta=0.75 and the paper's alpha=1e-4, which PyTorch
spells alpha=5e-4 because it divides by n), SGD with momentum 0.9 and weight decay 5e-4.
Inputs are uint8 crops already on the GPU, converted and mean-subtracted there, so this is an
upper bound for PyTorch (no data loading at all).

Prints one JSON line per precision mode and compile mode:
  fp32   TF32 off for matmuls and convolutions (pure fp32, as dfdx computes)
  tf32   PyTorch's default for convolutions (cuDNN may use TF32 tensor cores)
  bf16   bf16 autocast with channels_last tensors (PyTorch's fastest setting here)
and, with --compile, eager (`none`) or `torch.compile` in the given modes (`default`,
`reduce-overhead`, `max-autotune`, `max-autotune-no-cudagraphs`); the compiled step's warm-up
(compilation included) is timed on its own (`warmup_s`) and left out of the throughput.
--profile N prints, per setting, the GPU time of each kernel over N profiled steps
(torch.profiler), to set beside `alexnet bench-train`'s own per-stage profile.

Usage: python3 benches/pytorch_alexnet.py [--batch-size 128] [--steps 20] [--classes 1000]
           [--modes fp32,tf32,bf16] [--compile none,default] [--profile 5]

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


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def bench(mode: str, compile_mode: str, args) -> dict:
    if mode not in ("fp32", "tf32", "bf16"):
        raise SystemExit(f"unknown mode {mode!r}: use fp32, tf32 or bf16")
    if compile_mode not in COMPILE_MODES:
        raise SystemExit(f"unknown compile mode {compile_mode!r}: use one of {', '.join(COMPILE_MODES)}")
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
    # The module is compiled (forward and, through AOTAutograd, backward); the optimiser runs
    # as PyTorch's fused-by-default foreach SGD.
    run = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
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
            loss = loss_fn(run(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    warmup_started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - warmup_started
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if args.profile:
        profile_kernels(step, args.profile, f"{mode}, compile {compile_mode}")
    return {
        "impl": "pytorch",
        "mode": mode,
        "compile": compile_mode,
        "warmup_s": warmup_s,
        "lrn": not args.no_lrn,
        "batch_size": b,
        "steps": args.steps,
        "images_per_sec": b * args.steps / seconds,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }


def profile_kernels(step, steps: int, title: str):
    """Prints each kernel's GPU time per step over `steps` steps, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = [e for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows) / steps / 1e3
    print(f"# kernels of one step ({title}): {total:.2f} ms of GPU time per step")
    for e in rows[:40]:
        per_step = e.device_time_total / steps / 1e3
        print(f"#  {per_step:8.3f} ms  {e.count // steps:4d}x  {e.key[:110]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--no-lrn", action="store_true", help="leave out the two LRN layers")
    p.add_argument("--modes", default="fp32,tf32,bf16")
    p.add_argument("--compile", default="none",
                   help=f"comma-separated compile modes: {', '.join(COMPILE_MODES)}")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print each kernel's GPU time over N profiled steps")
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
    for compile_mode in args.compile.split(","):
        for mode in args.modes.split(","):
            print(json.dumps(bench(mode, compile_mode, args)), flush=True)


if __name__ == "__main__":
    main()
