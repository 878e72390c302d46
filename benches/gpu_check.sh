#!/usr/bin/env bash
# GPU checks, run from the project root on a CUDA machine that has no Rust toolchain:
#   0. `check-fast`: every fast-path kernel against the host kernels, and one training step of
#      the paper's network on the fast path against dfdx's ops (logits, all 16 gradients, SGD),
#      in strict fp32 (1e-4) and TF32 (2e-2);
#   1. `train --device cuda` (the fast path) against the CPU (dfdx) on the same pipeline and seed
#      (first steps' losses), 200 steps of the fast path against 200 of the dfdx path on the
#      GPU, `--resume` on the GPU against an uninterrupted GPU run, Ctrl-C saving, and
#      `evaluate --device cuda` against `evaluate --device cpu` on the same checkpoint;
#   2. a PyTorch-written checkpoint through `evaluate` on both devices;
#   3. full AlexNet (paper widths, LRN), batch 128, 224 crops of 256 shards, loader feeding it:
#      images/s, peak GPU memory and a per-stage profile (`alexnet bench-train`) for the fast
#      path (strict, TF32, TF32 with measured cuDNN algorithms) and the dfdx path, beside the
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

echo "== check-fast on $device: kernels and one training step against the reference"
for precision in strict tf32; do
    if alexnet check-fast --pipeline pipelines/alexnet.toml --device "$device" \
        --precision "$precision" > "$work/check-$precision.txt" 2>&1; then
        verdict=passed
    else
        verdict=FAILED
    fi
    grep -E "FAIL|error" "$work/check-$precision.txt" | head -20 || true
    worst=$(python3 - "$work/check-$precision.txt" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if not lines:
    print("no report"); sys.exit()
results = json.loads(lines[-1])["results"]
kernel = max((c["relative_error"], c["name"]) for c, _ in results if c["kind"] != "network")
net = max((c["relative_error"], c["name"]) for c, _ in results if c["kind"] == "network")
print(f"worst kernel {kernel[0]:.1e} ({kernel[1]}), worst step tensor {net[0]:.1e} ({net[1]})")
PY
)
    note "check-fast $precision on $device: $verdict; $worst"
done

echo "== train on $device against the CPU: same pipeline, same seed, first 10 steps"
alexnet train "${sample[@]}" --run "$work/cpu-run" --device cpu --stop-after-steps 10 \
    >/dev/null 2>&1 || [ $? -eq 130 ]
alexnet train "${sample[@]}" --run "$work/dev-run" --device "$device" --stop-after-steps 10 \
    2>&1 | grep -E "^training" || true
note "losses $device vs cpu: $(compare_losses "$work/dev-run/steps.csv" "$work/cpu-run/steps.csv")"

echo "== 200 steps on $device: the fast path against the dfdx path"
for engine in fast dfdx; do
    alexnet train "${sample[@]}" --run "$work/track-$engine" --device "$device" --engine "$engine" \
        --epochs 1000 --stop-after-steps "${TRACK_STEPS:-200}" >/dev/null 2>&1 || [ $? -eq 130 ]
done
note "fast vs dfdx on $device: $(python3 - "$work/track-fast/steps.csv" "$work/track-dfdx/steps.csv" <<'PY'
import csv, sys
def losses(path):
    return [float(r["loss"]) for r in csv.DictReader(open(path))]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
n = min(len(a), len(b))
tail = max(1, n // 10)
mean = lambda v: sum(v) / len(v)
print(f"{n} steps, loss first {a[0]:.4f} vs {b[0]:.4f}, mean of the last {tail} "
      f"{mean(a[n - tail:n]):.4f} vs {mean(b[n - tail:n]):.4f}, "
      f"max |difference| {max(abs(x - y) for x, y in zip(a, b)):.3f}")
PY
)"

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
        "$@" | tail -1 > "$work/one.json"
}
: > "$work/ours.jsonl"
for variant in "fast strict heuristic" "fast tf32 heuristic" "fast tf32 measure" "dfdx tf32 heuristic"; do
    set -- $variant
    echo "-- $variant"
    peak=$(with_peak_memory bench_ours --engine "$1" --precision "$2" --algorithms "$3")
    python3 - "$work/one.json" "$peak" "$variant" >> "$work/ours.jsonl" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report["peak_memory_mib"], report["variant"] = sys.argv[2], sys.argv[3]
print(json.dumps(report))
PY
    tail -1 "$work/ours.jsonl"
done

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
python3 - "$work/ours.jsonl" "$work/torch.jsonl" "$work/loader.json" "$device" <<'PY'
import json, sys
variants = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
loader = json.load(open(sys.argv[3]))
device = sys.argv[4]
names = {"fast strict heuristic": "fast path, strict fp32",
         "fast tf32 heuristic": "fast path, TF32",
         "fast tf32 measure": "fast path, TF32, measured algorithms",
         "dfdx tf32 heuristic": "dfdx path (strict fp32 SGEMM)"}
for v in variants:
    name = f"ours: {names.get(v['variant'], v['variant'])}, loader-fed"
    print(f"{name:52} {v['images_per_sec']:10.0f}   peak GPU memory {v['peak_memory_mib']} MiB")
for r in rows:
    name = f"PyTorch {r['torch']} {r['mode']}{'' if r['lrn'] else ', no LRN'}, synthetic"
    memory = f"   peak {r['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in r else ""
    print(f"{name:52} {r['images_per_sec']:10.0f}{memory}")
print(f"{'the loader alone, u8, %d threads' % loader['threads']:44} {loader['images_per_sec']:10.0f}")
best_torch = max((r for r in rows if r["lrn"]), key=lambda r: r["images_per_sec"], default=None)
fp32 = next((r for r in rows if r["mode"] == "fp32" and r["lrn"]), None)
by = {v["variant"]: v for v in variants}
if fp32 and "fast strict heuristic" in by:
    print(f"fast strict / PyTorch fp32: {by['fast strict heuristic']['images_per_sec'] / fp32['images_per_sec']:.2f}")
if best_torch and "fast tf32 heuristic" in by:
    print(f"fast tf32 / PyTorch best ({best_torch['mode']}): "
          f"{by['fast tf32 heuristic']['images_per_sec'] / best_torch['images_per_sec']:.2f}")
for v in variants:
    print(f"profile of {v['variant']} ({v['path']}), median ms per step:")
    for k, ms in v["phases_ms"].items():
        print(f"  {k:30} {ms:8.2f}")
    for k, ms in v["stages_ms"]:
        print(f"    {k:28} {ms:8.2f}")
PY
