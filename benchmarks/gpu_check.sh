#!/usr/bin/env bash
# One GPU check, under 8 minutes (docs/gpu.md): environment; the Triton kernel parity tests on CUDA (-m gpu);
# per-kernel forward/backward timings (Triton vs PyTorch built-ins vs the plain code); then training throughput
# at the TinyStories configuration (vocab 10k, ctx 256, d_model 512, d_ff 1344, 4 layers, 16 heads, batch 128,
# bf16 autocast): eager for the plain path, the opt-in SDPA attention (the best setting before the kernels), the
# Triton kernels and the built-in peer; compiled for the last three; tokens/s, MFU and ratios to the peer.
#
#   bash benchmarks/gpu_check.sh                  # on the GPU box (python3 with torch + triton; no uv needed)
#   OUT=dir bash benchmarks/gpu_check.sh          # also write JSON results (kernels.json, model_*.json) to dir
#   bash benchmarks/gpu_check.sh --tiny           # the same stages on the CPU, tiny shapes, Triton's interpreter:
#                                                 # a check that nothing crashes before GPU time is spent
#   bash benchmarks/gpu_check.sh --time-to-loss out/gpu-data/train.bin
#                                                 # then also time to a fixed validation loss (about 4 more minutes)
#
# PYTHON=... picks the interpreter (default python3). Every stage has its own time cap (470 s in all without
# --time-to-loss) and a failure in one does not stop the others; the exit code is the compiled stage's.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
TINY=0
TTL_DATA=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) TINY=1 ;;
        --time-to-loss) TTL_DATA="${2:?--time-to-loss needs a token file}"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; fi
json() { [ -n "${OUT:-}" ] && echo "$1 $OUT/$2"; }
start=$(date +%s)
stamp() { echo; echo "=== [$(( $(date +%s) - start )) s] $*"; }

if [ "$TINY" = 1 ]; then
    export TRITON_INTERPRET=1  # Triton's CPU interpreter, read when triton is first imported
    DEV=(--device cpu --tiny)
    BENCH=(--device cpu --tiny --steps 1 --warmup 1 --repeats 2)
else
    DEV=(--device cuda)
    BENCH=(--device cuda --batch-size 128 --dtype bf16 --steps 5 --warmup 3 --repeats 3)
fi

stamp "environment"
timeout 20 "$PY" - <<'PY'
import torch
print("torch", torch.__version__, "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as e:
    print("triton: MISSING", e)
PY

if [ "$TINY" = 1 ]; then
    stamp "tests (CPU): the Triton parity tests under the interpreter (cap 150 s)"
    timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_triton.py \
        || echo "tests: FAILED or timed out (continuing)"
else
    stamp "tests on CUDA (-m gpu): Triton kernel parity at larger shapes, the model's id checks (cap 100 s)"
    timeout 100 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_triton.py tests/test_model.py \
        || echo "tests: FAILED or timed out (continuing)"
fi

stamp "per-kernel timings, forward and backward (B=128, H=16, T=256, D=32; cap 40 s)"
timeout 40 "$PY" benchmarks/bench_kernels.py "${DEV[@]}" $(json --json kernels.json) \
    || echo "kernel timings: FAILED or timed out (continuing)"

IMPLS=scratch,sdpa,triton,builtin
stamp "training throughput, eager: $IMPLS (cap 70 s)"
timeout 70 "$PY" benchmarks/bench_model.py "${BENCH[@]}" --impls "$IMPLS" $(json --out-json model_eager.json) \
    || echo "eager throughput: FAILED or timed out (continuing)"

# compiled: three compilations (~30-60 s each); the plain path compiled was 0.73x the peer before (docs/gpu.md)
IMPLS=sdpa,triton,builtin
stamp "training throughput, torch.compile: $IMPLS (cap 240 s)"
timeout 240 "$PY" benchmarks/bench_model.py "${BENCH[@]}" --compile --impls "$IMPLS" \
    $(json --out-json model_compiled.json)
status=$?

if [ -n "$TTL_DATA" ] || [ "$TINY" = 1 ]; then
    stamp "time to a fixed validation loss: best setting vs built-in peer (cap 300 s)"
    if [ "$TINY" = 1 ]; then TTL=(--device cpu --tiny); else TTL=(--device cuda --data "$TTL_DATA"); fi
    timeout 300 "$PY" benchmarks/time_to_loss.py "${TTL[@]}" $(json --json time_to_loss.json) \
        || echo "time to loss: FAILED or timed out"
fi
stamp "done (exit $status)"
exit $status
