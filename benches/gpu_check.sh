#!/usr/bin/env bash
# GPU checks, run from the project root on a CUDA machine that has no Rust toolchain:
#   1. `train --device cuda` against the CPU on the same pipeline and seed (first steps'
#      losses), `--resume` on the GPU against an uninterrupted GPU run, Ctrl-C saving, and
#      `evaluate --device cuda` against `evaluate --device cpu` on the same checkpoint;
#   2. a PyTorch-written checkpoint through `evaluate` on both devices;
#   3. full AlexNet (paper widths, LRN), batch 128, 224 crops of 256 shards, loader feeding it:
#      images/s, peak GPU memory and a per-stage profile (`alexnet bench-train`), beside the
#      same network and step in PyTorch (fp32 with TF32 off, TF32, bf16 + channels_last) in
#      the same run, and the loader alone on all cores.
# A short table comes last. Build first, on a machine with the CUDA toolkit
# (`cargo build --release --features cuda`), and strip the binary to carry it.
# Usage: bash benches/gpu_check.sh [DIR]   (DIR holds the CUDA build of `alexnet`, default
# target/release; a DIR with a run.sh wrapper, for machines without the toolkit, runs through it)
# DEVICE=cpu BATCH=16 STEPS=2 run the same script on a CPU build, to check the script itself.
set -euo pipefail
dir=${1:-target/release}
device=${DEVICE:-cuda}
batch=${BATCH:-128}
steps=${STEPS:-30}
alexnet() {
    if [ -f "$dir/run.sh" ]; then bash "$dir/run.sh" "$dir/alexnet" "$@"; else "$dir/alexnet" "$@"; fi
}
work=$(mktemp -d)
jobs=$(nproc)
have_torch=$(python3 -c "import torch" 2>/dev/null && echo 1 || echo 0)
results="$work/results.txt"
: > "$results"
note() { echo "$*" | tee -a "$results"; }

# Peak GPU memory while a command runs (nvidia-smi sampled every 100 ms), in MiB.
with_peak_memory() {
    local log="$work/memory.log"
    if command -v nvidia-smi >/dev/null && [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
        local sampler=$!
        "$@"
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        sort -n "$log" | tail -1
    else
        "$@"
        echo "n/a"
    fi
}

# The largest relative difference between the losses of the steps two runs share.
compare_losses() {
    python3 - "$1" "$2" <<'PY'
import csv, sys
def losses(path):
    return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(path))}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
common = sorted(set(a) & set(b))
worst = max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in common)
print(f"{len(common)} steps, max relative loss difference {worst:.2e}")
PY
}

# A report's centre and ten-crop errors, for comparing two evaluations.
errors() {
    python3 - "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(" ".join("%s top-1 %.4f top-5 %.4f" % (k, report[k]["top1_error"], report[k]["top5_error"])
               for k in ("center", "ten_crop")))
PY
}

echo "== data"
alexnet sample --out "$work/src" --classes 10 --train-per-class 64 --val-per-class 8 \
    --min-side 256 --max-side 480 --no-edge-cases >/dev/null
alexnet preprocess --input "$work/src" --output "$work/shards-256" \
    --pipeline pipelines/alexnet.toml --jobs "$jobs" 2>&1 | tail -3
alexnet preprocess --input "$work/src" --output "$work/shards-sample" \
    --pipeline pipelines/sample.toml --jobs "$jobs" 2>&1 | tail -3
sample=(--data "$work/shards-sample" --pipeline pipelines/sample.toml)

echo "== train on $device against the CPU: same pipeline, same seed, first 10 steps"
alexnet train "${sample[@]}" --run "$work/cpu-run" --device cpu --stop-after-steps 10 \
    >/dev/null 2>&1 || [ $? -eq 130 ]
alexnet train "${sample[@]}" --run "$work/dev-run" --device "$device" --stop-after-steps 10 \
    2>&1 | grep -E "^training" || true
note "losses $device vs cpu: $(compare_losses "$work/dev-run/steps.csv" "$work/cpu-run/steps.csv")"

echo "== resume on $device: stopped at step 10, resumed, against an uninterrupted run"
alexnet train "${sample[@]}" --run "$work/dev-run" --device "$device" --resume --epochs 2 \
    2>&1 | grep -E "^(epoch|done)"
alexnet train "${sample[@]}" --run "$work/dev-whole" --device "$device" --epochs 2 \
    2>&1 | grep -E "^(epoch|done)"
note "resumed vs uninterrupted on $device: $(compare_losses "$work/dev-run/steps.csv" "$work/dev-whole/steps.csv")"

echo "== Ctrl-C on $device saves and exits 130"
set +e
alexnet train "${sample[@]}" --run "$work/dev-int" --device "$device" --epochs 10 >/dev/null 2>&1 &
trainer=$!
# Interrupt once training is under way (a few steps logged), as a user at the terminal would.
for _ in $(seq 240); do
    [ "$(wc -l 2>/dev/null < "$work/dev-int/steps.csv" || echo 0)" -gt 5 ] && break
    sleep 0.5
done
# The binary itself (not a wrapper script), found by its command line.
for proc in /proc/[0-9]*; do
    cmdline=$(tr '\0' ' ' 2>/dev/null < "$proc/cmdline" || true)
    case "$cmdline" in
        *"alexnet train "*dev-int*) case "$cmdline" in bash*) ;; *) kill -INT "${proc#/proc/}" ;; esac ;;
    esac
done
wait "$trainer"
status=$?
set -e
saved=$(ls "$work/dev-int/checkpoints" 2>/dev/null | wc -l)
note "Ctrl-C on $device: exit $status, $saved checkpoint(s) saved"

echo "== evaluate on $device against the CPU, same checkpoint"
alexnet evaluate --data "$work/shards-sample" --run "$work/dev-whole" --device "$device" 2>&1 | tail -4
cp "$work/dev-whole/eval/report.json" "$work/report-dev.json"
alexnet evaluate --data "$work/shards-sample" --run "$work/dev-whole" --device cpu >/dev/null 2>&1
note "evaluate $device: $(errors "$work/report-dev.json")"
note "evaluate cpu:  $(errors "$work/dev-whole/eval/report.json")"

echo "== a checkpoint written by PyTorch evaluates (paper widths, 10 classes)"
if [ "$have_torch" = 1 ] && python3 -c "import safetensors.torch" 2>/dev/null; then
    python3 benches/pytorch_alexnet.py --classes 10 --save-checkpoint "$work/torch.safetensors"
    for d in "$device" cpu; do
        alexnet evaluate --data "$work/shards-256" --run "$work/torch-eval-$d" \
            --pipeline pipelines/alexnet.toml --checkpoint "$work/torch.safetensors" \
            --device "$d" --batch-size 4 >/dev/null 2>&1
        note "PyTorch checkpoint on $d: $(errors "$work/torch-eval-$d/eval/report.json")"
    done
else
    note "PyTorch checkpoint: skipped (this Python has no torch or no safetensors)"
fi

echo "== alexnet bench-train ($device, batch $batch)"
bench_ours() {
    alexnet bench-train --data "$work/shards-256" --pipeline pipelines/alexnet.toml \
        --device "$device" --batch-size "$batch" --steps "$steps" --warmup 5 --profile-steps 5 \
        | tail -1 > "$work/ours.json"
}
peak=$(with_peak_memory bench_ours)
cat "$work/ours.json"

echo "== the loader alone, all $jobs cores (u8 crops, batch $batch)"
alexnet bench-loader --data "$work/shards-256" --pipeline pipelines/alexnet.toml --output u8 \
    --batch-size "$batch" --batches 100 | tail -1 > "$work/loader.json"

: > "$work/torch.jsonl"
if [ "$have_torch" = 1 ]; then
    echo "== PyTorch reference (10 classes, as the data)"
    python3 benches/pytorch_alexnet.py --batch-size "$batch" --steps "$steps" --classes 10 \
        --modes fp32,tf32,bf16 | tee "$work/torch.jsonl"
    python3 benches/pytorch_alexnet.py --batch-size "$batch" --steps "$steps" --classes 10 \
        --modes fp32 --no-lrn | tee -a "$work/torch.jsonl"
fi

echo "== summary (images/s, batch $batch, full AlexNet with LRN unless noted)"
cat "$results"
python3 - "$work/ours.json" "$work/torch.jsonl" "$work/loader.json" "$peak" "$device" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
loader = json.load(open(sys.argv[3]))
peak, device = sys.argv[4], sys.argv[5]
print(f"{'dfdx (ours), fp32, loader-fed, ' + device:44} {ours['images_per_sec']:10.0f}   peak GPU memory {peak} MiB")
for r in rows:
    name = f"PyTorch {r['torch']} {r['mode']}{'' if r['lrn'] else ', no LRN'}, synthetic"
    memory = f"   peak {r['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in r else ""
    print(f"{name:44} {r['images_per_sec']:10.0f}{memory}")
print(f"{'the loader alone, u8, %d threads' % loader['threads']:44} {loader['images_per_sec']:10.0f}")
fp32 = next((r for r in rows if r["mode"] == "fp32" and r["lrn"]), None)
if fp32:
    print(f"ratio ours / PyTorch fp32: {ours['images_per_sec'] / fp32['images_per_sec']:.2f} "
          f"on {fp32['device']}")
for k, v in ours["phases_ms"].items():
    print(f"  {k:24} {v:8.2f} ms")
for k, v in ours["forward_stages_ms"]:
    print(f"    forward {k:20} {v:8.2f} ms")
PY
