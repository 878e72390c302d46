#!/usr/bin/env bash
# Every GPU check and benchmark in one run (a few minutes on an H200), ending with one table:
#   check-fast   the fast path's kernels against the host kernels, and one training step of the
#                paper's network against dfdx (logits), an f64 replay of its own backward pass
#                (gradients) and SGD in f64, strict, TF32 and bf16, at batches 2 to 128, in the
#                NCHW layout and (smallest and largest batch) the NHWC one; TF32 and bf16 held to
#                2× PyTorch's own TF32 and bf16 (autocast) error on the same weights and batch
#                (benches/pytorch_precision.py, measured here in the same run); TF32 and bf16
#                also replayed from CUDA graphs, held bit for bit to the step run directly;
#   sanitizer    compute-sanitizer memcheck, racecheck and initcheck over check-fast (both
#                layouts) and a few training steps (the sample network);
#   training     the GPU against the CPU (first steps), NHWC against NCHW, bf16 against TF32
#                (first steps), passes replayed as CUDA graphs against launched ones (bit for
#                bit, TF32 NCHW and bf16 NHWC), the fast path against the dfdx path and bf16 against TF32 (300
#                steps at a flat learning rate, both curves reported), --resume against an
#                uninterrupted run, one data-parallel rank
#                (NCCL) against the plain run, Ctrl-C, evaluate on both devices, a
#                PyTorch-written checkpoint;
#   speed        `alexnet bench-train` (paper AlexNet, batches 128 and 256, loader-fed) bf16,
#                strict, TF32, TF32 with measured algorithms (each in NCHW and NHWC), bf16 and
#                TF32 with CUDA graphs, and the dfdx path, with peak GPU memory,
#                beside PyTorch (fp32, TF32, bf16; eager and torch.compile) in the same run, and
#                our bf16 beside PyTorch's in one row per batch; the loader alone; the fast path's
#                per-stage profile (TF32 in both layouts, bf16 in NHWC) and each kernel's GPU
#                time in one step (Nsight Compute, benches/ncu_step.py).
# It never stops at a failure: each check's verdict goes into the table.
# Build first, on a machine with the CUDA toolkit (`cargo build --release --features cuda`).
# Usage: bash benches/gpu_check.sh [DIR]   (DIR holds the CUDA build of `alexnet`, default
# target/release; a DIR with a run.sh wrapper, for machines without the toolkit, runs through it)
# DEVICE=cpu BATCH=16 STEPS=2 CHECK_BATCHES="2 3" TRACK_STEPS=20 SPEED_BATCHES=16 run the same
# script on a CPU build, to check the script itself. TORCH_MODES and TORCH_COMPILE choose
# PyTorch's settings (default fp32,tf32,bf16 and none,default). LOGS=FILE.tgz keeps every log;
# TABLE=FILE keeps the table as it grows (for a run that may be cut short).
# SECTIONS picks what runs (default "check sanitizer training speed ncu"; e.g. SECTIONS="speed"
# for the benchmarks alone), BUDGET=SECONDS skips whatever would start after that many seconds
# (each skipped part gets a row), so that a run on a lent GPU ends inside its time.
set -uo pipefail
dir=${1:-target/release}
device=${DEVICE:-cuda}
batch=${BATCH:-128}
steps=${STEPS:-30}
check_batches=${CHECK_BATCHES:-2 8 16 128}
speed_batches=${SPEED_BATCHES:-$batch 256}
torch_modes=${TORCH_MODES:-fp32,tf32,bf16}
torch_compile=${TORCH_COMPILE:-none,default}
ncu=${NCU:-/usr/local/cuda/bin/ncu}
work=$(mktemp -d)
jobs=$(nproc)
have_torch=$(python3 -c "import torch, safetensors" 2>/dev/null && echo 1 || echo 0)
sanitizer=${SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
table=${TABLE:-$work/table.tsv}
: > "$table"
started=$(date +%s)
sections=" ${SECTIONS:-check sanitizer training speed ncu} "
budget=${BUDGET:-0}

alexnet() {
    if [ -f "$dir/run.sh" ]; then bash "$dir/run.sh" "$dir/alexnet" "$@"; else "$dir/alexnet" "$@"; fi
}
# row SECTION CHECK VERDICT DETAIL: one line of the final table.
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$table"; echo "[$1] $2: $3 $4"; }
seconds() { echo $(( $(date +%s) - $1 )); }
# wants SECTION [WHAT]: whether to run a part of SECTION now (asked; within the budget). A part
# skipped for time gets a row saying so.
wants() {
    case $sections in *" $1 "*) ;; *) return 1 ;; esac
    if [ "$budget" -gt 0 ] && [ "$(seconds "$started")" -ge "$budget" ]; then
        row "$1" "${2:-all}" skipped "(past BUDGET=$budget s)"
        return 1
    fi
}

echo "== data"
t=$(date +%s)
alexnet sample --out "$work/src" --classes 10 --train-per-class 64 --val-per-class 8 \
    --min-side 256 --max-side 480 --no-edge-cases >/dev/null 2>&1
for p in alexnet sample; do
    alexnet preprocess --input "$work/src" --output "$work/shards-$p" \
        --pipeline "pipelines/$p.toml" --jobs "$jobs" > "$work/preprocess-$p.txt" 2>&1
done
row data "sample + preprocess" "$( [ -d "$work/shards-sample" ] && echo done || echo FAILED)" "$(seconds "$t") s"
sample=(--data "$work/shards-sample" --pipeline pipelines/sample.toml)

# The verdict and worst held / reported errors of one check-fast report.
summarise_check() {
    python3 - "$1" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
if not lines:
    print("FAILED\tno report (see the log)"); sys.exit()
r = json.loads(lines[-1])
held = [(c, t) for c, t in r["results"] if t is not None]
bad = [c["name"] for c, t in held if not c["relative_error"] <= t]
def worst(pred):
    cs = [c for c, t in r["results"] if pred(c)]
    c = max(cs, key=lambda c: c["relative_error"], default=None)
    return f"{c['relative_error']:.1e} {c['name']}" if c else "-"
replay = worst(lambda c: c["kind"] == "replay")
e2e = worst(lambda c: c["kind"] == "end_to_end" and c["name"].startswith("dfdx"))
kernel = worst(lambda c: c["kind"].endswith("kernel"))
differing = sum(d["differing"] for d in r["decisions"])
verdict = "passed" if not bad else "FAILED (" + ", ".join(bad[:4]) + ")"
recorded = worst(lambda c: c["kind"] == "recorded")
recorded = "" if recorded == "-" else f"; CUDA graphs {recorded}"
print(f"{verdict}\tkernels {kernel}; logits {worst(lambda c: c['name'] == 'logits')}; "
      f"replay {replay}; vs dfdx {e2e} (reported){recorded}; {differing} decisions differ")
PY
}

echo "== check-fast on $device: kernels, and one step against dfdx and the f64 replay"
for b in $check_batches; do
    wants check "batch $b" || continue
    t=$(date +%s)
    alexnet check-fast --device "$device" --precision strict --batch-size "$b" \
        > "$work/check-strict-$b.txt" 2>&1
    IFS=$'\t' read -r verdict detail < <(summarise_check "$work/check-strict-$b.txt")
    row check-fast "strict, batch $b" "$verdict" "$detail; $(seconds "$t") s"
    # TF32 and bf16: PyTorch's own error in that precision on the same weights and batch sets
    # the tolerance. One case serves both (it holds no precision); a JSON exists only if measured.
    written=0
    [ "$have_torch" = 1 ] && alexnet check-fast --batch-size "$b" \
        --write-case "$work/case-$b.safetensors" > /dev/null 2>&1 && written=1
    for precision in tf32 bf16; do
        name=$( [ "$precision" = tf32 ] && echo TF32 || echo bf16)
        reference=()
        if [ "$written" = 1 ] &&
            python3 benches/pytorch_precision.py "$work/case-$b.safetensors" --precision "$precision" \
                --out "$work/pytorch-$precision-$b.json" > "$work/pytorch-$precision-$b.txt" 2>&1; then
            reference=(--reference-errors "$work/pytorch-$precision-$b.json")
            row check-fast "PyTorch's own $name error, batch $b" measured "$(tail -1 "$work/pytorch-$precision-$b.txt")"
        else
            rm -f "$work/pytorch-$precision-$b.json"
            row check-fast "PyTorch's own $name error, batch $b" "not measured" \
                "(no torch here, or it failed: $(tail -1 "$work/pytorch-$precision-$b.txt" 2>/dev/null)); fixed tolerance"
        fi
        t=$(date +%s)
        # With CUDA graphs: the step is also run twice more, recorded and replayed, and held
        # bit for bit to the first (strict runs every kernel directly only).
        alexnet check-fast --device "$device" --precision "$precision" --batch-size "$b" "${reference[@]}" \
            --graphs on > "$work/check-$precision-$b.txt" 2>&1
        IFS=$'\t' read -r verdict detail < <(summarise_check "$work/check-$precision-$b.txt")
        row check-fast "$precision, batch $b" "$verdict" "$detail; $(seconds "$t") s"
    done
    # Channels-last activations: their own kernels, and cuDNN told the layout.
    case " ${check_batches%% *} ${check_batches##* } " in *" $b "*)
        for precision in strict tf32 bf16; do
            t=$(date +%s)
            held=()
            [ -f "$work/pytorch-$precision-$b.json" ] &&
                held=(--reference-errors "$work/pytorch-$precision-$b.json")
            alexnet check-fast --device "$device" --precision "$precision" --layout nhwc \
                --batch-size "$b" "${held[@]}" --graphs on > "$work/check-nhwc-$precision-$b.txt" 2>&1
            IFS=$'\t' read -r verdict detail < <(summarise_check "$work/check-nhwc-$precision-$b.txt")
            row check-fast "nhwc $precision, batch $b" "$verdict" "$detail; $(seconds "$t") s"
        done ;;
    esac
done
# The largest batch's decisions and cuDNN algorithms, for the record.
[ -f "$work/check-strict-${check_batches##* }.txt" ] && sed -n '/^decisions/,/^{/p' "$work/check-strict-${check_batches##* }.txt" | grep -v '^{' | sed 's/^/  /'
[ -f "$work/check-tf32-${check_batches##* }.txt" ] && sed -n '/^decisions/,/^{/p' "$work/check-tf32-${check_batches##* }.txt" | grep -v '^{' | sed 's/^/  /' | tail -n +2
[ -f "$work/check-bf16-${check_batches##* }.txt" ] && sed -n '/^decisions/,/^{/p' "$work/check-bf16-${check_batches##* }.txt" | grep -v '^{' | sed 's/^/  /' | tail -n +2

echo "== compute-sanitizer over check-fast and a few training steps (sample network)"
if ! wants sanitizer; then
    :
elif [ "$device" = cuda ] && [ -x "$sanitizer" ]; then
    # The tools run side by side (each is bound by the CPU, which instruments every access).
    sanitize() {
        local tool=$1 log=$2
        shift 2
        timeout "${SANITIZER_TIMEOUT:-120}" "$sanitizer" --tool "$tool" --target-processes all \
            --error-exitcode 9 bash "$dir/run.sh" "$dir/alexnet" "$@" > "$log" 2>&1
        echo $? > "$log.status"
    }
    t=$(date +%s)
    for tool in memcheck racecheck initcheck; do
        sanitize "$tool" "$work/sanitizer-$tool.txt" check-fast --device cuda --batch-size 2 \
            --pipeline pipelines/sample.toml &
    done
    sanitize memcheck "$work/sanitizer-nhwc.txt" check-fast --device cuda --batch-size 2 \
        --pipeline pipelines/sample.toml --layout nhwc &
    # With CUDA graphs: the steps after the second replay their passes (check-fast above runs
    # every kernel directly).
    sanitize memcheck "$work/sanitizer-train.txt" train "${sample[@]}" --run "$work/sanitized" \
        --device cuda --graphs on --stop-after-steps 4 &
    wait
    for tool in memcheck racecheck initcheck nhwc train; do
        log="$work/sanitizer-$tool.txt"
        status=$(cat "$log.status" 2>/dev/null || echo missing)
        summary=$(grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
        case $tool:$status in
            *:0 | train:130) verdict=passed ;;
            *:124) verdict="TIMED OUT" ;;
            *) verdict="FAILED (exit $status)" ;;
        esac
        case $tool in
            train) what="memcheck, 4 training steps, CUDA graphs" ;;
            nhwc) what="memcheck, check-fast --layout nhwc" ;;
            *) what="$tool, check-fast" ;;
        esac
        row sanitizer "$what" "$verdict" "${summary:-no summary}"
    done
    row sanitizer "all five, side by side" "" "$(seconds "$t") s"
else
    row sanitizer "memcheck, racecheck, initcheck" skipped "(no GPU or no $sanitizer)"
fi

# The largest relative difference between the losses of the steps two runs share, held to
# THRESHOLD (default 1e-2); with `last`, only the last shared step is held (for runs that part
# by rounding step by step), and the first run must also have every step of the second and end
# on a finite loss.
compare_losses() {
    python3 - "$@" <<'PY'
import csv, math, sys
def losses(path):
    try:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(path))}
    except OSError:
        return {}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-2
last_only = len(sys.argv) > 4 and sys.argv[4] == "last"
common = sorted(set(a) & set(b))
if not common:
    print("FAILED\tno common steps"); sys.exit()
def relative(s):
    return abs(a[s] - b[s]) / max(abs(b[s]), 1e-12)
# A NaN difference is the worst of all.
worst = max((relative(s) for s in common), key=lambda d: d if d == d else math.inf)
if last_only:
    last = common[-1]
    ok = set(b) <= set(a) and math.isfinite(a[last]) and relative(last) <= limit
    detail = (f"{len(a)} steps ({len(b)} in the other), last loss {a[last]:.4f} vs {b[last]:.4f}, "
              f"max relative loss difference {worst:.2e}")
else:
    ok = worst <= limit
    detail = f"{len(common)} steps, max relative loss difference {worst:.2e}"
print(f"{'passed' if ok else 'FAILED'}\t{detail}")
PY
}

echo "== training on $device"
# The section's checks build on each other's runs: one decision for all of them.
if wants training; then
t=$(date +%s)
alexnet train "${sample[@]}" --run "$work/cpu-run" --device cpu --stop-after-steps 10 >/dev/null 2>&1
alexnet train "${sample[@]}" --run "$work/dev-run" --device "$device" --stop-after-steps 10 >/dev/null 2>&1
IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-run/steps.csv" "$work/cpu-run/steps.csv")
row training "first 10 steps, $device vs cpu" "$verdict" "$detail; $(seconds "$t") s"
t=$(date +%s)
alexnet train "${sample[@]}" --run "$work/dev-nhwc" --device "$device" --layout nhwc \
    --stop-after-steps 10 >/dev/null 2>&1
IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-nhwc/steps.csv" "$work/dev-run/steps.csv")
row training "first 10 steps, nhwc vs nchw on $device" "$verdict" "$detail; $(seconds "$t") s"
# Passes replayed as CUDA graphs (recorded at the second step) launch the same kernels on the
# same buffers: the same losses bit for bit, and every pass after the second step replayed.
for variant in "tf32 nchw" "bf16 nhwc"; do
    set -- $variant
    t=$(date +%s)
    launched="$work/dev-run"
    if [ "$1" != tf32 ] || [ "$2" != nchw ]; then
        launched="$work/dev-launched-$1-$2"
        alexnet train "${sample[@]}" --run "$launched" --device "$device" --precision "$1" \
            --layout "$2" --stop-after-steps 10 >/dev/null 2>&1
    fi
    alexnet train "${sample[@]}" --run "$work/dev-graphs-$1-$2" --device "$device" --precision "$1" \
        --layout "$2" --graphs on --stop-after-steps 10 > "$work/dev-graphs-$1-$2.log" 2>&1
    IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-graphs-$1-$2/steps.csv" "$launched/steps.csv" 0)
    passes=$(grep -h "passes (compute.graphs)" "$work/dev-graphs-$1-$2.log" | tail -1)
    case $passes in *"recording failed"* | "") verdict=FAILED ;; esac
    row training "CUDA graphs vs launched, $1 $2, on $device" "$verdict" "$detail; ${passes:-no passes line}; $(seconds "$t") s"
done
t=$(date +%s)
alexnet train "${sample[@]}" --run "$work/dev-bf16" --device "$device" --precision bf16 \
    --stop-after-steps 10 >/dev/null 2>&1
# bf16 beside TF32 (dev-run, the pipeline's precision): rounding alone parts them step by step,
# so the difference is reported, and the row fails only if bf16 logged fewer steps, ended on a
# loss that is not finite, or ended more than 10% (relative) away from TF32's last loss.
IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-bf16/steps.csv" "$work/dev-run/steps.csv" 0.1 last)
row training "first 10 steps, bf16 vs tf32 on $device" "$verdict" "$detail; $(seconds "$t") s"

# Two long runs' loss curves (TRACK_STEPS steps at the sample recipe's learning rate, held
# flat): both must learn, and end alike — the mean of their last tenth within BOUND (relative)
# of each other. Prints the verdict, then both curves at five points.
compare_curves() {
    python3 - "$1" "$2" "$3" <<'PY'
import csv, sys
def losses(path):
    try:
        return [float(r["loss"]) for r in csv.DictReader(open(path))]
    except OSError:
        return []
a, b = losses(sys.argv[1]), losses(sys.argv[2])
n = min(len(a), len(b))
if n == 0:
    print("FAILED\tno steps"); sys.exit()
tail = max(1, n // 10)
mean = lambda v: sum(v) / len(v)
fa, fb = mean(a[n - tail:n]), mean(b[n - tail:n])
# A short run (the script checking itself on a CPU) cannot show learning: only alike is judged.
learns = n < 100 or (fa < 0.75 * a[0] and fb < 0.75 * b[0])
ok = learns and abs(fa - fb) <= float(sys.argv[3]) * fb
judged = "" if n >= 100 else " (too few steps to judge learning)"
points = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})
curves = ", ".join(f"step {i + 1} {a[i]:.3f}/{b[i]:.3f}" for i in points)
print(f"{'passed' if ok else 'FAILED'}\t{n} steps, mean of the last {tail} {fa:.4f} vs {fb:.4f}"
      f"{judged}; curves {curves}")
PY
}
t=$(date +%s)
# The sample recipe with its learning rate held (no decay on a plateau).
sed 's/^lr_patience = .*/lr_patience = 1000000/' pipelines/sample.toml > "$work/flat-lr.toml"
flat=(--data "$work/shards-sample" --pipeline "$work/flat-lr.toml" --device "$device" --epochs 1000
      --stop-after-steps "${TRACK_STEPS:-300}")
for run in "fast --precision tf32" "dfdx --precision tf32" "fast --precision bf16"; do
    read -r engine flag precision <<< "$run"
    alexnet train "${flat[@]}" --run "$work/track-$engine-$precision" --engine "$engine" \
        "$flag" "$precision" >/dev/null 2>&1
done
# The bound is loose for dfdx because its engine is not deterministic on the GPU: two of its
# runs from one seed ended 200 steps at 1.34 and 1.67 (H200, 2026-12-04).
IFS=$'\t' read -r verdict detail < <(compare_curves "$work/track-fast-tf32/steps.csv" "$work/track-dfdx-tf32/steps.csv" 0.25)
row training "fast vs dfdx engine on $device" "$verdict" "$detail; $(seconds "$t") s"
# bf16 against TF32 on the same path: rounding parts the curves from the first step, and at this
# scale when each leaves its plateau is decided by rounding, so the bound is dfdx's (on the CPU,
# emulated: the last 30 of 300 steps at 1.29 in bf16, 1.41 in TF32, 1.50 on the dfdx path).
IFS=$'\t' read -r verdict detail < <(compare_curves "$work/track-fast-bf16/steps.csv" "$work/track-fast-tf32/steps.csv" 0.25)
row training "bf16 vs tf32, flat learning rate, on $device" "$verdict" "$detail"

t=$(date +%s)
alexnet train "${sample[@]}" --run "$work/dev-run" --device "$device" --resume --epochs 2 >/dev/null 2>&1
alexnet train "${sample[@]}" --run "$work/dev-whole" --device "$device" --epochs 2 >/dev/null 2>&1
IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-run/steps.csv" "$work/dev-whole/steps.csv" 0)
row training "--resume vs uninterrupted" "$verdict" "$detail; $(seconds "$t") s"

# One rank launched as torchrun launches it sums its gradients through NCCL on a GPU (a build
# with --features nccl; libnccl.so.2 from the Python environment) and through the control
# plane on the CPU: step for step, it must be the plain run.
t=$(date +%s)
nccl_lib=$(python3 -c "import glob, os, nvidia; print(':'.join(sorted({os.path.dirname(f) for r in nvidia.__path__ for f in glob.glob(os.path.join(r, '**', 'libnccl.so.2'), recursive=True)})))" 2>/dev/null)
RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=${RANK_PORT:-29517} \
    LD_LIBRARY_PATH="${nccl_lib:+$nccl_lib:}${LD_LIBRARY_PATH:-}" \
    alexnet train "${sample[@]}" --run "$work/dev-rank" --device "$device" --stop-after-steps 10 \
    > "$work/rank.txt" 2>&1
IFS=$'\t' read -r verdict detail < <(compare_losses "$work/dev-rank/steps.csv" "$work/dev-whole/steps.csv" 0)
[ "$verdict" = passed ] || detail="$detail; $(grep -m1 error "$work/rank.txt")"
row training "one rank via the launcher (NCCL) vs plain" "$verdict" "$detail; $(seconds "$t") s"

t=$(date +%s)
alexnet train "${sample[@]}" --run "$work/dev-int" --device "$device" --epochs 1000 >/dev/null 2>&1 &
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
saved=$(ls "$work/dev-int/checkpoints" 2>/dev/null | wc -l)
verdict=$( [ $status -eq 130 ] && [ "$saved" -gt 0 ] && echo passed || echo FAILED)
row training "Ctrl-C saves and exits 130" "$verdict" "exit $status, $saved checkpoint(s); $(seconds "$t") s"

# A report's centre and ten-crop errors.
errors() {
    python3 - "$1" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except OSError:
    print("no report"); sys.exit()
print(" ".join("%s %.4f/%.4f" % (k, report[k]["top1_error"], report[k]["top5_error"])
               for k in ("center", "ten_crop")))
PY
}
t=$(date +%s)
alexnet evaluate --data "$work/shards-sample" --run "$work/dev-whole" --device "$device" >/dev/null 2>&1
on_device=$(errors "$work/dev-whole/eval/report.json")
alexnet evaluate --data "$work/shards-sample" --run "$work/dev-whole" --device cpu >/dev/null 2>&1
on_cpu=$(errors "$work/dev-whole/eval/report.json")
verdict=$( [ "$on_device" = "$on_cpu" ] && [ "$on_cpu" != "no report" ] && echo passed || echo FAILED)
row training "evaluate $device vs cpu (top-1/top-5)" "$verdict" "$on_device | $on_cpu; $(seconds "$t") s"

if [ "$have_torch" = 1 ]; then
    t=$(date +%s)
    python3 benches/pytorch_alexnet.py --classes 10 --save-checkpoint "$work/torch.safetensors" >/dev/null 2>&1
    for d in "$device" cpu; do
        alexnet evaluate --data "$work/shards-alexnet" --run "$work/torch-eval-$d" \
            --pipeline pipelines/alexnet.toml --checkpoint "$work/torch.safetensors" \
            --device "$d" --batch-size 4 >/dev/null 2>&1
    done
    a=$(errors "$work/torch-eval-$device/eval/report.json")
    b=$(errors "$work/torch-eval-cpu/eval/report.json")
    verdict=$( [ "$a" = "$b" ] && [ "$a" != "no report" ] && echo passed || echo FAILED)
    row training "PyTorch checkpoint, $device vs cpu" "$verdict" "$a | $b; $(seconds "$t") s"
fi
fi # training

echo "== speed: alexnet bench-train ($device, batches $speed_batches) beside PyTorch"
# Peak GPU memory while a command runs (nvidia-smi sampled every 100 ms), in MiB.
with_peak_memory() {
    local log="$work/memory.log"
    if command -v nvidia-smi >/dev/null && [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log" &
        local sampler=$!
        "$@"
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
        sort -n "$log" | tail -1
    else
        "$@"
        echo "n/a"
    fi
}
bench_ours() {
    local b=$1
    shift
    alexnet bench-train --data "$work/shards-alexnet" --pipeline pipelines/alexnet.toml \
        --device "$device" --batch-size "$b" --steps "$steps" --warmup 5 --profile-steps 5 \
        "$@" 2>/dev/null | tail -1 > "$work/one.json"
}
# One batch's bf16 runs, ours (both layouts, NHWC also with CUDA graphs) and PyTorch's (eager,
# compiled): our faster NHWC over PyTorch eager, then each run's throughput and peak memory.
# Prints nothing if neither ran.
bf16_side_by_side() {
    python3 - "$work/ours.jsonl" "$work/torch-$1.jsonl" "$1" <<'PY'
import json, sys
def read(path):
    try:
        return [json.loads(l) for l in open(path) if l.startswith("{")]
    except OSError:
        return []
b = int(sys.argv[3])
# By layout, and "graphs" where the passes were replayed.
ours = {" ".join(v["variant"].split()[3:]): v for v in read(sys.argv[1])
        if v["variant"].startswith("fast bf16 ") and v["batch_size"] == b}
torch = {r["compile"]: r for r in read(sys.argv[2]) if r["mode"] == "bf16"}
if not ours and not torch:
    sys.exit()
parts = [f"ours {l} {v['images_per_sec']:.0f} img/s, peak {v['peak_memory_mib']} MiB"
         for l, v in sorted(ours.items(), key=lambda lv: not lv[0].startswith("nhwc"))]
parts += [f"PyTorch {'eager' if c == 'none' else 'compile ' + c} {r['images_per_sec']:.0f} img/s, "
          f"peak {r['peak_memory_mib']:.0f} MiB" for c, r in torch.items()]
ratio = "-"
nhwc = [(v["images_per_sec"], l) for l, v in ours.items() if l.startswith("nhwc")]
if nhwc and "none" in torch:
    best, layout = max(nhwc)
    ratio = f"{best / torch['none']['images_per_sec']:.2f}x eager ({layout})"
print(f"{ratio}\t" + "; ".join(parts))
PY
}
: > "$work/ours.jsonl"
for b in $speed_batches; do
    # bf16 in NHWC first (the layout its tensor-core convolutions read): the row a run cut short
    # by BUDGET should still have.
    # Then what decides the defaults (layout, graphs) before the rest.
    variants=("fast bf16 heuristic nhwc" "fast bf16 heuristic nhwc graphs")
    for layout in nhwc nchw; do
        variants+=("fast tf32 heuristic $layout" "fast tf32 heuristic $layout graphs")
    done
    for layout in nchw nhwc; do
        variants+=("fast strict heuristic $layout" "fast tf32 measure $layout")
    done
    variants+=("fast bf16 heuristic nchw")
    # The dfdx engine once, as the reference point.
    [ "$b" = "${speed_batches%% *}" ] && variants+=("dfdx tf32 heuristic nchw")
    for variant in "${variants[@]}"; do
        wants speed "ours, batch $b: $variant" || continue
        set -- $variant
        : > "$work/one.json"
        peak=$(with_peak_memory bench_ours "$b" --engine "$1" --precision "$2" --algorithms "$3" \
            --layout "$4" --graphs "$([ "${5:-}" = graphs ] && echo on || echo off)")
        if python3 - "$work/one.json" "$peak" "$variant" >> "$work/ours.jsonl" 2>/dev/null <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
report["peak_memory_mib"], report["variant"] = sys.argv[2], sys.argv[3]
print(json.dumps(report))
PY
        then
            row speed "ours, batch $b: $variant" "$(python3 -c "import json,sys; print('%.0f img/s' % json.loads(open(sys.argv[1]).readlines()[-1])['images_per_sec'])" "$work/ours.jsonl")" \
                "peak $peak MiB$(python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).readlines()[-1]).get('replays'); print('' if r is None else '; passes %d recorded, %d replayed, %d direct%s' % (r['recorded'], r['replayed'], r['direct'], '; RECORDING FAILED: ' + r['refused'] if r['refused'] else ''))" "$work/ours.jsonl")"
        else
            row speed "ours, batch $b: $variant" FAILED "no report"
        fi
    done
    if [ "$have_torch" = 1 ] && wants speed "PyTorch, batch $b"; then
        # Eager and torch.compile (its warm-up, compilation included, is timed apart).
        python3 benches/pytorch_alexnet.py --batch-size "$b" --steps "$steps" --classes 10 \
            --modes "$torch_modes" --compile "$torch_compile" > "$work/torch-$b.jsonl" 2>/dev/null
        while read -r line; do
            row speed "PyTorch, batch $b: $(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['torch'], r['mode'], 'eager' if r['compile'] == 'none' else 'compile ' + r['compile'])" "$line")" \
                "$(python3 -c "import json,sys; print('%.0f img/s' % json.loads(sys.argv[1])['images_per_sec'])" "$line")" \
                "$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print('peak %.0f MiB, warm-up %.0f s (synthetic input)' % (r['peak_memory_mib'], r['warmup_s']))" "$line")"
        done < "$work/torch-$b.jsonl"
    fi
    # Our bf16 and PyTorch's (autocast) in one row, as measured above: nothing is run here.
    IFS=$'\t' read -r verdict detail < <(bf16_side_by_side "$b")
    if [ -n "$verdict" ]; then
        row speed "bf16, batch $b: ours beside PyTorch" "$verdict" "$detail"
    fi
done
if wants speed "the loader alone"; then
    alexnet bench-loader --data "$work/shards-alexnet" --pipeline pipelines/alexnet.toml --output u8 \
        --batch-size "$batch" --batches 100 2>/dev/null | tail -1 > "$work/loader.json"
    row speed "the loader alone, u8, $jobs threads" \
        "$(python3 -c "import json,sys; print('%.0f img/s' % json.load(open(sys.argv[1]))['images_per_sec'])" "$work/loader.json" 2>/dev/null || echo FAILED)" ""
fi

echo
echo "== profile of the fast path (TF32, and bf16 NHWC, batch $batch), median ms per stage, device synchronised"
# Beside each stage: the bytes it must move and their time at the measured bandwidth (its
# floor), and its arithmetic (engine/costs.rs); TF32's, then bf16's.
python3 - "$work/ours.jsonl" "$batch" <<'PY'
import json, sys
columns = {"nchw": "fast tf32 heuristic nchw", "nhwc": "fast tf32 heuristic nhwc",
           "bf16 nhwc": "fast bf16 heuristic nhwc"}
runs = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    for column, variant in columns.items():
        if v["variant"] == variant and v["batch_size"] == int(sys.argv[2]):
            runs[column] = v
if not runs:
    print("  (no profile)"); sys.exit()
floors = {f["stage"]: f for l, r in runs.items() if l != "bf16 nhwc" for f in r.get("floors", [])}
floors_bf16 = {f["stage"]: f for f in runs.get("bf16 nhwc", {}).get("floors", [])}
bandwidth = ", ".join(f"{l} run {r.get('bandwidth_gbs') or float('nan'):.0f} GB/s" for l, r in runs.items())
print(f"  measured bandwidth: {bandwidth}")
print(f"  {'stage':32} {'nchw ms':>8} {'nhwc ms':>8} {'MB':>8} {'floor ms':>8} {'GFLOP':>8}"
      f" {'bf16 ms':>8} {'bf16 MB':>8} {'bf16 floor':>10}")
stages = {l: dict(r["stages_ms"]) for l, r in runs.items()}
names = list(dict.fromkeys(k for s in stages.values() for k in s))
for k in names:
    ms = [stages.get(l, {}).get(k, float("nan")) for l in columns]
    f, g = floors.get(k), floors_bf16.get(k)
    rest = f"{f['megabytes']:8.1f} {f['floor_ms']:8.3f} {f['gflop']:8.1f}" if f else f"{'':26}"
    bf16 = f" {g['megabytes']:8.1f} {g['floor_ms']:10.3f}" if g else ""
    print(f"  {k:32} {ms[0]:8.2f} {ms[1]:8.2f} {rest} {ms[2]:8.2f}{bf16}")
PY
# Each kernel of one unsynchronised step (Nsight Compute, one metric, clocks and caches left
# alone), grouped by kernel: where the GPU time goes, beside PyTorch's own per-kernel profile
# (benches/pytorch_alexnet.py --profile).
if [ "$device" = cuda ] && [ -x "$ncu" ]; then
    t=$(date +%s)
    for layout in ${NCU_LAYOUTS:-nchw nhwc}; do
        wants ncu "$layout" || continue
        t=$(date +%s)
        timeout 300 "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
            --csv --log-file "$work/ncu-$layout.csv" bash "$dir/run.sh" "$dir/alexnet" bench-train \
            --data "$work/shards-alexnet" --pipeline pipelines/alexnet.toml --device cuda \
            --layout "$layout" --batch-size "$batch" --steps 2 --warmup 2 --profile-steps 0 \
            > "$work/ncu-run-$layout.txt" 2>&1
        python3 benches/ncu_step.py "$work/ncu-$layout.csv" > "$work/ncu-step-$layout.txt" 2>&1
        verdict=$(head -1 "$work/ncu-step-$layout.txt")
        row speed "GPU time of one step (ncu, $layout)" "$verdict" \
            "$(seconds "$t") s; by kernel in ncu-step-$layout.txt"
        echo "  $layout:"
        sed -n '/^by kernel/,$p' "$work/ncu-step-$layout.txt" | head -25 | sed 's/^/  /'
    done
fi
if [ -n "${LOGS:-}" ]; then
    tar czf "$LOGS" -C "$work" --exclude='src' --exclude='shards-*' --exclude='*.safetensors' \
        --exclude='cpu-run' --exclude='dev-*' --exclude='track-*' --exclude='torch-eval-*' . 2>/dev/null
fi

echo
echo "== summary: $(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo "$device"), $(seconds "$started") s in all"
failed=$(awk -F'\t' '$3 ~ /FAIL|TIMED/' "$table" | wc -l)
awk -F'\t' '{ printf "%-10s %-44s %-14s %s\n", $1, $2, $3, $4 }' "$table"
echo "$failed check(s) failed"
[ "$failed" -eq 0 ]
