#!/usr/bin/env python3
"""PyTorch's own precision error on the training step `alexnet check-fast` checks.

`alexnet check-fast --write-case CASE.safetensors --batch-size B [--pipeline P]` writes the
checked step: the initial weights under PyTorch's names and layouts, the normalised input
(NCHW), the labels, the dropout masks and the LRN settings. This script runs that step
(forward, mean cross-entropy, backward) in PyTorch three ways on the GPU (four for bf16):
  fp64   the exact reference
  fp32   TF32 off for convolutions and matmuls
  tf32   TF32 tensor cores for convolutions and matmuls
  bf16   bf16 autocast on channels_last input and filters, as benches/pytorch_alexnet.py runs
         it (LRN and the loss as autocast runs them; gradients of the fp32 parameters)
and writes, per tensor (`logits`, `features.0.weight`, ...), PyTorch's own error in the asked
precision: ‖tf32 − fp32‖ / ‖fp32‖ for `--precision tf32`, ‖bf16 − fp32‖ / ‖fp32‖ for `bf16`,
‖fp32 − fp64‖ / ‖fp64‖ for `strict`.
These are end-to-end errors, near-ties of ReLUs and pooling windows included: what a PyTorch
user accepts when choosing that precision. `alexnet check-fast --reference-errors OUT.json`
then holds each tensor of our step to a multiple of PyTorch's error for it.

Usage: python3 benches/pytorch_precision.py CASE.safetensors --out OUT.json
           [--precision tf32|strict|bf16]
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

CONVS = [(0, 11, 4, 2), (4, 5, 1, 2), (8, 3, 1, 1), (10, 3, 1, 1), (12, 3, 1, 1)]
LINEARS = ["classifier.1", "classifier.4", "classifier.6"]


def load(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def step(tensors, meta, mode, dev):
    """Logits and the sixteen parameters' gradients of one step, as float64 on the host."""
    bf16 = mode == "bf16"
    # bf16 as benches/pytorch_alexnet.py sets it up: TF32 on for whatever autocast leaves fp32.
    tf32 = mode in ("tf32", "bf16")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    dtype = torch.float64 if mode == "fp64" else torch.float32
    # Channels-last input and filters: PyTorch's fastest bf16 convolutions, what users run.
    memory = torch.channels_last if bf16 else torch.preserve_format
    params = {
        k: v.to(dev, dtype, memory_format=memory if v.dim() == 4 else torch.preserve_format)
        .requires_grad_()
        for k, v in tensors.items()
        if k.startswith(("features.", "classifier."))
    }
    x = tensors["input"].to(dev, dtype, memory_format=memory)
    lrn = meta["lrn"] == "true"
    size = int(meta["lrn_size"])
    # PyTorch divides alpha by the window size; the paper (and we) do not.
    norm = nn.LocalResponseNorm(
        size, alpha=float(meta["lrn_alpha"]) * size, beta=float(meta["lrn_beta"]), k=float(meta["lrn_k"])
    )
    # The loss inside autocast too, as pytorch_alexnet.py computes it (autocast runs it in fp32).
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for i, (index, kernel, stride, pad) in enumerate(CONVS):
            w, b = params[f"features.{index}.weight"], params[f"features.{index}.bias"]
            assert w.shape[-1] == kernel
            x = F.relu(F.conv2d(x, w, b, stride=stride, padding=pad))
            if lrn and i < 2:
                x = norm(x)
            if i in (0, 1, 4):
                x = F.max_pool2d(x, 3, 2)
        x = x.flatten(1)
        masks = [tensors.get("dropout.fc6"), tensors.get("dropout.fc7"), None]
        for name, mask in zip(LINEARS, masks):
            if mask is not None:
                # In the activations' dtype, as nn.Dropout keeps it (0 and 2 are exact in bf16).
                x = x * mask.to(dev, x.dtype)
            x = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
            if name != LINEARS[-1]:
                x = F.relu(x)
        logits = x
        loss = F.cross_entropy(logits, tensors["labels"].to(dev).long())
    loss.backward()
    out = {"logits": logits.detach()}
    out.update({k: v.grad for k, v in params.items()})
    return {k: v.double().cpu() for k, v in out.items()}


def relative(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", help="the file `alexnet check-fast --write-case` wrote")
    p.add_argument("--out", required=True, help="JSON for `alexnet check-fast --reference-errors`")
    p.add_argument("--precision", choices=["tf32", "strict", "bf16"], default="tf32")
    args = p.parse_args()
    tensors, meta = load(args.case)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 only when asked: the tf32 and strict reports stay as they were.
    modes = ("fp64", "fp32", "tf32") + (("bf16",) if args.precision == "bf16" else ())
    runs = {mode: step(tensors, meta, mode, dev) for mode in modes}
    if args.precision == "strict":
        errors = {k: relative(runs["fp32"][k], runs["fp64"][k]) for k in runs["fp64"]}
    else:
        errors = {k: relative(runs[args.precision][k], runs["fp32"][k]) for k in runs["fp32"]}
    report = {
        "batch": int(meta["batch"]),
        "precision": args.precision,
        "errors": errors,
        "against_fp64": {
            mode: {k: relative(runs[mode][k], runs["fp64"][k]) for k in runs["fp64"]}
            for mode in modes[1:]
        },
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    worst = max(errors, key=errors.get)
    print(f"PyTorch {args.precision} error, batch {report['batch']}: logits {errors['logits']:.2e}, "
          f"worst tensor {worst} {errors[worst]:.2e}")


if __name__ == "__main__":
    main()
