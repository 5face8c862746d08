"""Per-kernel timings, forward and backward: the Triton kernels of cs336_basics/_kernels/triton_kernels.py against
PyTorch's
built-ins and the package's plain code, at the TinyStories shapes (batch 128, 16 heads, 256 positions, head dim 32,
d_model 512) unless told otherwise.

    python benchmarks/bench_kernels.py                          # on a GPU (bf16 attention/RoPE, fp32 residual norm)
    TRITON_INTERPRET=1 python benchmarks/bench_kernels.py --device cpu --tiny   # a check of the code paths only

Each row: median milliseconds of the forward and of forward + backward (backward = the difference), after warmup,
synchronizing the device around each call. Prints a table; writes JSON to --json or $OUT/kernels.json.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the built-in peers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import BuiltinRoPE, synchronize  # noqa: E402 - the peers, shared with the throughput benchmark

from cs336_basics import layers, triton_kernels  # noqa: E402


def _time_ms(fn, inputs: list[torch.Tensor], backward: bool, warmup: int, reps: int) -> float:
    device = inputs[0].device
    leaves = [t.detach().requires_grad_(backward and t.is_floating_point()) for t in inputs]
    grad = None
    times = []
    for i in range(warmup + reps):
        synchronize(device)
        start = time.perf_counter()
        out = fn(*leaves)
        if backward:
            outs = list(out) if isinstance(out, tuple) else [out]
            grad = [torch.ones_like(o) for o in outs] if grad is None else grad
            torch.autograd.backward(outs, grad)
        synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
        for t in leaves:
            t.grad = None
    return statistics.median(times)


def _cases(b: int, h: int, t: int, d: int, device: torch.device) -> dict:
    bf16 = torch.bfloat16
    qkv = [torch.randn(b, t, h, d, device=device, dtype=bf16).transpose(1, 2) for _ in range(3)]
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    x = torch.randn(b, t, h * d, device=device)  # the residual stream is float32 under autocast
    w = torch.ones(h * d, device=device)
    rope = layers.RotaryPositionalEmbedding(10_000.0, d, t, device=device)
    peer_rope = BuiltinRoPE(10_000.0, d, t, device=device)  # the built-in model's RoPE: fp32 tables, plain ops

    def norm(kernels):
        module = layers.RMSNorm(h * d, device=device, kernels=kernels)
        return lambda x, w: torch.func.functional_call(module, {"weight": w}, (x,))

    return {
        "attention": (
            qkv,
            {
                "plain": lambda q, k, v: layers.scaled_dot_product_attention(q, k, v, causal),
                "triton": triton_kernels.flash_attention,
                "builtin": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            },
        ),
        "rmsnorm": (
            [x, w],
            {
                "plain": norm("torch"),
                "triton": norm("triton"),
                "builtin": lambda x, w: F.rms_norm(x, (h * d,), w, 1e-5),
            },
        ),
        "rope_qk": (
            qkv[:2],
            {
                "plain": lambda q, k: (rope(q), rope(k)),
                "triton": lambda q, k: triton_kernels.rope_qk(q, k, rope.cos, rope.sin),
                "builtin": lambda q, k: (peer_rope(q), peer_rope(k)),
            },
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check of the code paths)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", default=None, help="write results here (default $OUT/kernels.json when OUT is set)")
    args = parser.parse_args()
    device = torch.device(args.device)
    try:
        triton_kernels.check_device(torch.empty(0, device=device))
    except (ModuleNotFoundError, ValueError) as e:
        parser.error(str(e))
    shape = (2, 2, 40, 32) if args.tiny else (args.batch_size, args.heads, args.seq, args.head_dim)
    reps, warmup = (2, 1) if args.tiny else (args.reps, args.warmup)
    torch.manual_seed(0)
    results = {}
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), B,H,T,D={shape}"
    )
    print(f"{'kernel':<10}{'impl':<9}{'fwd ms':>9}{'bwd ms':>9}{'fwd+bwd':>9}{'vs builtin':>12}")
    for kernel, (inputs, impls) in _cases(*shape, device).items():
        for impl, fn in impls.items():
            fwd = _time_ms(fn, inputs, False, warmup, reps)
            both = _time_ms(fn, inputs, True, warmup, reps)
            results[f"{kernel}/{impl}"] = dict(fwd_ms=fwd, bwd_ms=both - fwd, fwd_bwd_ms=both)
        base = results[f"{kernel}/builtin"]["fwd_bwd_ms"]
        for impl in impls:
            r = results[f"{kernel}/{impl}"]
            r["speedup_vs_builtin"] = base / r["fwd_bwd_ms"]
            print(
                f"{kernel:<10}{impl:<9}{r['fwd_ms']:>9.3f}{r['bwd_ms']:>9.3f}{r['fwd_bwd_ms']:>9.3f}"
                f"{r['speedup_vs_builtin']:>11.2f}x"
            )
    path = args.json or (Path(os.environ["OUT"]) / "kernels.json" if os.environ.get("OUT") else None)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"shape": shape, "device": str(device), "results": results}, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
