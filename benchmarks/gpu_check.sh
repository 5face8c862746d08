#!/usr/bin/env bash
# One GPU check, under 8 minutes: environment, the model/train tests on CUDA, then the TinyStories training
# throughput (tokens/s, MFU) with fp32, bf16, bf16+compile and bf16+compile+sdpa.
#
#   bash benchmarks/gpu_check.sh            # on the GPU box (python3 with torch, no uv needed); OUT=dir for JSON
#   bash benchmarks/gpu_check.sh --tiny     # a quick CPU run of the same script (tiny model, CPU device)
#
# Every stage has its own time cap and a failure in one does not stop the others; the exit code is 0 when the
# throughput table was produced.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start )) s] $*"; }

stamp "environment"
timeout 60 "$PY" - <<'PY'
import torch
print("torch", torch.__version__, "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
PY

if [ "$TINY" = 1 ]; then
    stamp "tests (CPU, tiny check: the KV-cache and schedule tests only)"
    timeout 120 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_generation.py -k "kv_cache" \
        || echo "tests: FAILED or timed out (continuing)"
else
    stamp "model/train tests on CUDA (cap 100 s)"
    CS336_TEST_DEVICE=cuda CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 100 "$PY" -m pytest -q -x -p no:cacheprovider \
        tests/test_model.py tests/test_train.py tests/test_generation.py \
        || echo "tests: FAILED or timed out (continuing)"
fi

stamp "model accounting"
timeout 60 "$PY" -m cs336_basics.cli model-info --batch-size 128 || true

if [ "$TINY" = 1 ]; then
    stamp "throughput: tiny model on the CPU (a check of the script, not a measurement)"
    timeout 400 "$PY" benchmarks/throughput.py --tiny --device cpu --warmup 2 --seconds 1 --cap-s 60 \
        --compile-cap-s 150 --threads 1
else
    stamp "throughput: TinyStories config (vocab 10k, ctx 256, d 512, d_ff 1344, 4 layers, 16 heads, batch 128)"
    # caps: compiled settings 140 s each, eager ones 40 s each; 360 s at most in all
    timeout 365 "$PY" benchmarks/throughput.py --device cuda --warmup 10 --seconds 5 --cap-s 40 --compile-cap-s 140
fi
status=$?
stamp "done (exit $status)"
exit $status
