#!/usr/bin/env bash
# GPU checks, run from the project root on a CUDA machine that has no Rust toolchain:
#   1. full AlexNet (paper widths, LRN), batch 128, 224 crops of 256 shards, loader feeding it:
#      images/s and a per-stage profile (`alexnet bench-train`);
#   2. the same network and step in PyTorch, fp32 (TF32 off) and with TF32 (default), same run;
#   3. a PyTorch-written checkpoint through `alexnet evaluate --device cuda`;
#   4. `alexnet train --device cuda` for two epochs of the sample pipeline.
# Build first, on a machine with the CUDA toolkit (`cargo build --release --features cuda`) and
# strip the binary: release builds keep line tables (105 MB; 17 MB stripped).
# Usage: bash benches/gpu_check.sh [DIR]   (DIR holds the CUDA build of `alexnet`, default
# target/release; a DIR with a run.sh wrapper, for machines without the toolkit, runs through it)
set -euo pipefail
dir=${1:-target/release}
alexnet() {
    if [ -f "$dir/run.sh" ]; then bash "$dir/run.sh" "$dir/alexnet" "$@"; else "$dir/alexnet" "$@"; fi
}
work=$(mktemp -d)
jobs=$(nproc)

echo "== data"
alexnet sample --out "$work/src" --classes 10 --train-per-class 64 --val-per-class 8 \
    --min-side 256 --max-side 480 --no-edge-cases >/dev/null
alexnet preprocess --input "$work/src" --output "$work/shards-256" \
    --pipeline pipelines/alexnet.toml --jobs "$jobs" 2>&1 | tail -3
alexnet preprocess --input "$work/src" --output "$work/shards-sample" \
    --pipeline pipelines/sample.toml --jobs "$jobs" 2>&1 | tail -3

echo "== alexnet bench-train (CUDA, batch 128)"
alexnet bench-train --data "$work/shards-256" --pipeline pipelines/alexnet.toml --device cuda \
    --steps 30 --warmup 5 --profile-steps 5 | tail -1 > "$work/ours.json"
cat "$work/ours.json"

echo "== PyTorch reference (10 classes, as the data)"
python3 benches/pytorch_alexnet.py --batch-size 128 --steps 30 --classes 10 | tee "$work/torch.jsonl"
python3 benches/pytorch_alexnet.py --batch-size 128 --steps 30 --classes 10 --modes fp32 --no-lrn \
    | tee -a "$work/torch.jsonl"

echo "== a checkpoint written by PyTorch evaluates (paper widths, 10 classes)"
if python3 -c "import safetensors.torch" 2>/dev/null; then
    python3 benches/pytorch_alexnet.py --classes 10 --save-checkpoint "$work/torch.safetensors"
    alexnet evaluate --data "$work/shards-256" --run "$work/torch-eval" --pipeline pipelines/alexnet.toml \
        --checkpoint "$work/torch.safetensors" --device cuda 2>&1 | tail -6
else
    echo "skipped: this Python has no safetensors package"
fi

echo "== alexnet train --device cuda (sample pipeline, 2 epochs)"
alexnet train --data "$work/shards-sample" --run "$work/run" --pipeline pipelines/sample.toml \
    --device cuda --epochs 2 2>&1 | grep -E "^(epoch|done|training)"

echo "== summary (images/s, batch 128, full AlexNet with LRN unless noted)"
python3 - "$work/ours.json" "$work/torch.jsonl" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
fp32 = next(r for r in rows if r["mode"] == "fp32" and r["lrn"])
print(f"{'dfdx (ours), fp32, loader-fed':44} {ours['images_per_sec']:10.0f}")
for r in rows:
    name = f"PyTorch {r['torch']} {r['mode']}{'' if r['lrn'] else ', no LRN'}, synthetic"
    print(f"{name:44} {r['images_per_sec']:10.0f}")
print(f"ratio ours / PyTorch fp32: {ours['images_per_sec'] / fp32['images_per_sec']:.2f} "
      f"on {fp32['device']}")
for k, v in ours["phases_ms"].items():
    print(f"  {k:24} {v:8.2f} ms")
for k, v in ours["forward_stages_ms"]:
    print(f"    forward {k:20} {v:8.2f} ms")
PY
