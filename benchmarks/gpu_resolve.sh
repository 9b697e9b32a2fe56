#!/usr/bin/env bash
# Does `pip install -e ".[gpu,test]"` resolve, in a fresh venv, to a set the suite passes with?
# Builds the venv, times the install, prints the resolved versions that matter, runs `pip check`,
# imports the [gpu] packages, then runs the tests in that venv. CPU is enough: vllm and bitsandbytes
# import without a GPU; their GPU paths are benchmarks/gpu_smoke.sh's job.
#
#   benchmarks/gpu_resolve.sh /tmp/vipo-gpu-venv                       # tests: -q -m "not multinode"
#   PYTEST_ARGS="-q tests/test_vlm_rater.py" benchmarks/gpu_resolve.sh /tmp/v
#   PYTEST_ARGS=skip benchmarks/gpu_resolve.sh /tmp/v                  # resolve and import only
#
# The venv must not exist yet (a fresh one is the point). Exit status: the first failing step's.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:?usage: benchmarks/gpu_resolve.sh VENV_DIR (a folder that does not exist yet)}"
pytest_args="${PYTEST_ARGS:--q -m \"not multinode\"}"
python="${PYTHON:-python3}"

[ -e "$venv" ] && { echo "gpu_resolve: $venv exists; give a new folder (the venv must be fresh)" >&2; exit 2; }

step_start=0
step() { step_start=$(date +%s); echo "== $1"; }
took() { echo "   took $(( $(date +%s) - step_start )) s"; }

step "venv: $python -m venv $venv"
"$python" -m venv "$venv"
took
py="$venv/bin/python"

step "install: pip install -e \"$repo[gpu,test]\""
(cd "$repo" && "$py" -m pip install --progress-bar off --report "$venv/install-report.json" -e ".[gpu,test]") \
    > "$venv/install.log" 2>&1 || { tail -30 "$venv/install.log"; echo "gpu_resolve: install failed (log: $venv/install.log)" >&2; exit 1; }
took
"$py" - "$venv/install-report.json" <<'EOF'
import json, sys
from importlib.metadata import version
report = json.load(open(sys.argv[1]))["install"]
remote = [r for r in report if r["download_info"]["url"].startswith("http")]
print(f"   {len(report)} distributions installed, {len(remote)} of them fetched from an index over the network")
for name in ("vllm", "torch", "torchvision", "torchaudio", "transformers", "bitsandbytes", "ray", "diffusers",
             "accelerate", "peft", "tokenizers", "huggingface-hub", "numpy", "pillow", "pydantic", "flashinfer-python"):
    print(f"   {name:<18} {version(name)}")
EOF

step "pip check"
"$py" -m pip check
took

step "import the [gpu] extra on this machine"
"$py" -c "import vllm, bitsandbytes, torch; print('   vllm', vllm.__version__, '| bitsandbytes', bitsandbytes.__version__,
      '| cuda available:', torch.cuda.is_available())" || { echo "gpu_resolve: importing vllm/bitsandbytes failed" >&2; exit 1; }
took

if [ "$pytest_args" = "skip" ]; then
    echo "== tests skipped (PYTEST_ARGS=skip)"
    exit 0
fi
step "tests: python -m pytest $pytest_args"
(cd "$repo" && eval "\"$py\" -m pytest $pytest_args")
took
