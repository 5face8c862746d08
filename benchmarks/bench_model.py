"""Training throughput of the from-scratch TransformerLM against the same architecture built from torch built-ins.

One training step = forward + cross-entropy + backward + AdamW step, on random token ids (B, T). The models:
`scratch` (cs336_basics, the plain PyTorch path), `sdpa` (the same with the opt-in attention_backend="sdpa", the
repository's best GPU setting before the Triton kernels), `triton` (cs336_basics with ModelConfig(kernels="triton"):
its Triton attention, RMSNorm and RoPE kernels) and `builtin` (nn.Linear / nn.Embedding / nn.RMSNorm, i.e.
F.rms_norm / F.scaled_dot_product_attention / F.cross_entropy / torch.optim.AdamW, fused=True on CUDA; defined
below). They start from the same weights and are timed in one process, interleaved (A B C C B A ...) after warmup,
so machine-speed drift hits all alike. Each ratio is the median over repetitions of impl tokens/s / builtin
tokens/s, each repetition's pair measured back to back. MFU = tokens/s x training matmul FLOPs per token / the
GPU's dense peak for the dtype (cs336_basics.model_info; none on a CPU).

Default configuration: CS336 TinyStories (vocab 10,000, context 256, d_model 512, d_ff 1344, 4 layers, 16 heads,
RoPE theta 10,000). A CPU-sized run (about a minute on 2 cores):

    uv run python benchmarks/bench_model.py --batch-size 4 --steps 2 --repeats 5
    uv run python benchmarks/bench_model.py --compile --dtype bf16 --batch-size 128 --impls scratch,triton,builtin
    TRITON_INTERPRET=1 uv run python benchmarks/bench_model.py --device cpu --tiny --impls scratch,triton,builtin
        # a seconds-long CPU check of every code path (Triton's interpreter), not a measurement
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cs336_basics._kernels import triton_kernels
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.model_info import training_flops_per_token
from cs336_basics.nn_utils import cross_entropy
from cs336_basics.optimizer import AdamW
from cs336_basics.runtime import peak_flops

# --------------------------------------------------------------------------------------------------------------------
# The peer: the same architecture from torch built-ins, with the same state-dict names as TransformerLM.


class BuiltinRoPE(nn.Module):
    """The same rotation as cs336_basics (pairs (x[2k], x[2k+1]), angle pos / theta^(2k/d)), fp32 tables."""

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float().to(device), persistent=False)
        self.register_buffer("sin", angles.sin().float().to(device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_len = x.shape[-2]
        cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1).flatten(-2).type_as(x)


class BuiltinAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, rope: BuiltinRoPE, device=None):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (
            nn.Linear(d_model, d_model, bias=False, device=device) for _ in range(4)
        )
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rope(q), self.rope(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.output_proj(out.transpose(1, 2).reshape(b, t, d))


class BuiltinSwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, device=None):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False, device=device)
        self.w2 = nn.Linear(d_ff, d_model, bias=False, device=device)
        self.w3 = nn.Linear(d_model, d_ff, bias=False, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class BuiltinBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, rope: BuiltinRoPE, eps: float, device=None):
        super().__init__()
        self.ln1 = nn.RMSNorm(d_model, eps=eps, device=device)
        self.attn = BuiltinAttention(d_model, num_heads, rope, device=device)
        self.ln2 = nn.RMSNorm(d_model, eps=eps, device=device)
        self.ffn = BuiltinSwiGLU(d_model, d_ff, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class BuiltinLM(nn.Module):
    def __init__(self, config: ModelConfig, device=None):
        super().__init__()
        d_k = config.d_model // config.num_heads
        rope = BuiltinRoPE(config.rope_theta, d_k, config.context_length, device=device)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.d_model, device=device)
        self.layers = nn.ModuleList(
            BuiltinBlock(config.d_model, config.num_heads, config.resolved_d_ff, rope, config.norm_eps, device=device)
            for _ in range(config.num_layers)
        )
        self.ln_final = nn.RMSNorm(config.d_model, eps=config.norm_eps, device=device)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, device=device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embeddings(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_final(x))


# --------------------------------------------------------------------------------------------------------------------
# Timing


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


IMPLS = ("scratch", "sdpa", "triton", "builtin")
TINY = dict(vocab_size=256, context_length=40, d_model=64, d_ff=128, num_layers=2, num_heads=2, batch_size=2)


def make_trainer(name: str, config: ModelConfig, state_dict: dict, device: torch.device, args):
    """A closure that runs one training step of implementation `name` on a batch (x, y)."""
    hyper = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    if name != "builtin":  # scratch: the plain path; sdpa: its opt-in fused attention; triton: the Triton kernels
        switch = {"scratch": {}, "sdpa": {"attention_backend": "sdpa"}, "triton": {"kernels": "triton"}}[name]
        model = TransformerLM(ModelConfig(**{**config.to_dict(), **switch}), device=device)
        loss_fn, optimizer = cross_entropy, AdamW(model.parameters(), **hyper)
    else:
        model = BuiltinLM(config, device=device)
        fused = device.type == "cuda"  # the fastest built-in optimizer where it exists
        loss_fn, optimizer = F.cross_entropy, torch.optim.AdamW(model.parameters(), **hyper, fused=fused or None)
    model.load_state_dict(state_dict)
    forward = torch.compile(model) if args.compile else model
    autocast = args.dtype == "bf16"

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(x)
        loss = loss_fn(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step (default 4: CPU-sized)")
    parser.add_argument("--context-length", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="vocabulary size (default 10000)")
    parser.add_argument("--d-model", type=int, default=512, help="model width (default 512)")
    parser.add_argument("--d-ff", type=int, default=1344, help="SwiGLU hidden width (default 1344)")
    parser.add_argument("--num-layers", type=int, default=4, help="Transformer blocks (default 4)")
    parser.add_argument("--num-heads", type=int, default=16, help="attention heads (default 16)")
    parser.add_argument("--rope-theta", type=float, default=10_000.0, help="RoPE base (default 10000)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per repetition (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation first (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions; medians reported (default 5)")
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="fp32 or bf16 autocast (default fp32)"
    )
    parser.add_argument("--compile", action="store_true", help="wrap both models in torch.compile (default: eager)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the first one present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and token ids (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--impls", default="scratch,builtin", help=f"comma-separated, from {','.join(IMPLS)} (default scratch,builtin)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny model: a seconds-long check of the code paths")
    parser.add_argument("--out-json", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    names = tuple(n for n in args.impls.split(",") if n)
    if not names or any(n not in IMPLS for n in names):
        parser.error(f"--impls={args.impls!r}: choose from {IMPLS}")
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key.replace("-", "_"), value)
    for flag in ("batch_size", "context_length", "steps", "repeats"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device or default_device())
    if "triton" in names:
        try:
            triton_kernels.check_device(torch.empty(0, device=device))
        except (ModuleNotFoundError, ValueError) as e:
            parser.error(f"--impls triton: {e}")
    torch.manual_seed(args.seed)
    config = ModelConfig(
        vocab_size=args.vocab_size,
        context_length=args.context_length,
        d_model=args.d_model,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        d_ff=args.d_ff,
        rope_theta=args.rope_theta,
    )
    state_dict = TransformerLM(config, device=device).state_dict()
    trainers = {name: make_trainer(name, config, state_dict, device, args) for name in names}
    x = torch.randint(0, config.vocab_size, (args.batch_size, config.context_length), device=device)
    y = torch.randint(0, config.vocab_size, (args.batch_size, config.context_length), device=device)

    first_loss = {}
    for name in names:  # warmup (and compilation)
        for _ in range(args.warmup):
            first_loss[name] = float(trainers[name](x, y))
        synchronize(device)

    tokens_per_rep = args.steps * args.batch_size * config.context_length
    rates: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]  # ABCCBA: no side always runs first
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = trainers[name](x, y)
            float(loss)  # a host read: the step has finished on any device
            synchronize(device)
            rates[name].append(tokens_per_rep / (time.perf_counter() - start))

    base = "builtin" if "builtin" in names else names[-1]
    ratios_over = {n: [a / b for a, b in zip(rates[n], rates[base], strict=True)] for n in names}
    ratios = ratios_over.get("scratch", ratios_over[names[0]])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_flops(device_name, "bfloat16" if args.dtype == "bf16" else "float32") if device.type == "cuda" else None
    flops_per_token = training_flops_per_token(config)
    mfu = {n: statistics.median(r) * flops_per_token / peak if peak else None for n, r in rates.items()}
    result = {
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile": args.compile,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "config": config.to_dict(),
        "steps": args.steps,
        "repeats": args.repeats,
        "tokens_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "tokens_per_s_all": rates,
        "ratio_scratch_over_builtin": statistics.median(ratios),  # (first impl over the last without both)
        "ratios": ratios,
        "impls": list(names),
        "ratio_over": {n: statistics.median(r) for n, r in ratios_over.items()},
        "ratio_over_base": base,
        "mfu": mfu,
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "builtin_adamw_fused": device.type == "cuda",
        "first_loss": first_loss,  # same weights and batch: the two losses agree to float rounding
        "expected_initial_loss": math.log(config.vocab_size),
        "command": " ".join(["python", *sys.argv]),
    }
    if args.out_json:
        with open(args.out_json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"device={result['device']} ({result['device_name']}), torch {result['torch']}, threads={result['threads']}, "
        f"compile={args.compile}, dtype={args.dtype}, batch={args.batch_size}x{config.context_length}"
    )
    print(f"{'impl':<10}{'tokens/s (median)':>20}{'min':>12}{'max':>12}{'MFU':>8}{f'/ {base}':>12}{'first loss':>12}")
    for name in names:
        r, m = rates[name], f"{mfu[name]:.1%}" if mfu[name] else "n/a"
        print(
            f"{name:<10}{statistics.median(r):>20,.0f}{min(r):>12,.0f}{max(r):>12,.0f}{m:>8}"
            f"{result['ratio_over'][name]:>12.3f}{first_loss[name]:>12.4f}"
        )
    for name in names:
        if name != base:
            r = ratios_over[name]
            print(f"{name} / {base} = {statistics.median(r):.3f} (median of {len(r)}; {min(r):.3f} .. {max(r):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
