#!/usr/bin/env bash
# GPU smoke test for a lent GPU machine (one GPU, no network): tiny models built to disk, generation and one
# training step in bf16 and fp16, the vllm rater against the transformers rater on the same pairs. Each step
# is timed; the first failing step stops the run with its FAIL line. Needs the [gpu] extra installed.
#
#   benchmarks/gpu_smoke.sh                  # on the GPU machine (about 3-6 minutes, most of it vllm's start)
#   DEVICE=cpu benchmarks/gpu_smoke.sh       # dry run of everything but vllm on a CPU (fp16 steps skipped)
#   SMOKE_DIR=/tmp/s benchmarks/gpu_smoke.sh # where models and run folders go (default: a new temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
device="${DEVICE:-cuda}"
dir="${SMOKE_DIR:-$(mktemp -d -t vipo-gpu-smoke.XXXXXX)}"
export VIPO_CACHE="$dir/cache" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py="${PYTHON:-python}"
echo "gpu_smoke: device $device, folder $dir, $("$py" --version 2>&1)"

total_start=$(date +%s)
run() {  # run NAME ARGS...: one step, timed; stop at the first failure
    local name="$1"; shift
    local start; start=$(date +%s%N)
    echo "== $name"
    if ! "$py" benchmarks/gpu_smoke.py "$@" --device "$device"; then
        echo "gpu_smoke: FAILED at '$name' after $(( $(date +%s) - total_start )) s" >&2
        exit 1
    fi
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '   %s took %d.%01d s\n' "$name" $((ms / 1000)) $((ms % 1000 / 100))
}

run "check" check
run "build tiny models" build
run "generate bf16" generate --dtype bfloat16
[ "$device" = cpu ] || run "generate fp16" generate --dtype float16
run "train step bf16" train --mixed-precision bf16 --out "$dir"
[ "$device" = cpu ] || run "train step fp16" train --mixed-precision fp16 --out "$dir"
if [ "$device" = cpu ]; then
    run "rater transformers bf16 vs fp32" rater --dtype bfloat16
else
    run "rater vllm vs transformers bf16" rater --dtype bfloat16 --vllm
fi
echo "gpu_smoke: all steps passed in $(( $(date +%s) - total_start )) s"
