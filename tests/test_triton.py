"""The Triton kernels (cs336_basics/_kernels/triton_kernels.py) against the plain PyTorch path, values and gradients.

On the CPU they run under Triton's interpreter, which Triton switches on only when TRITON_INTERPRET=1 is set
before it is first imported (it then interprets the kernels and its own library). So the default run starts one
child pytest on this file with that variable set (`test_cpu_kernels_under_the_interpreter`), where the "cpu" cases
run, and the parent process keeps compiled Triton for CUDA and for the rest of the suite. Shapes are small (the
interpreter runs tiles one by one in numpy); under it the attention tiles are 16 x 16, so these shapes still cross
tiles, the causal diagonal and ragged ends. On CUDA the same tests run at larger shapes with the real tile sizes.

Tolerances: float32 within 1e-5 of a float64 reference; bfloat16 no further from the float64 reference than twice
the plain path's own bfloat16 error (plus a small floor), so rounding is allowed and a wrong formula is not.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from cs336_basics import layers
from cs336_basics._kernels import triton_kernels
from cs336_basics.model import ModelConfig, TransformerLM

pytestmark = pytest.mark.skipif(triton_kernels.triton is None, reason="triton is not installed")

INTERPRETED = triton_kernels.triton is not None and triton_kernels.INTERPRETED  # this process runs the CPU cases
CUDA = torch.cuda.is_available() and not INTERPRETED
NO_CUDA = pytest.mark.skipif(not CUDA, reason="needs CUDA (the cpu cases run in the interpreter child)")
DEVICES = ["cpu"] if INTERPRETED else [pytest.param("cuda", marks=[pytest.mark.gpu, NO_CUDA])]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreter run")
def test_cpu_kernels_under_the_interpreter():
    """Every "cpu" case of this file, in a child pytest with TRITON_INTERPRET=1 (see the module docstring)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x", "-m", "not gpu"]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def _close_as_plain(got: torch.Tensor, plain: torch.Tensor, exact: torch.Tensor, what: str) -> None:
    """float32: within 1e-5 of the float64 `exact`; lower precision: no worse than 2x the plain path's error."""
    if got.dtype == torch.float32:
        assert_close(got.double(), exact, rtol=1e-5, atol=1e-5, msg=what)
        return
    err, plain_err = (got.double() - exact).abs().max().item(), (plain.double() - exact).abs().max().item()
    floor = 1e-3 * exact.abs().max().item()
    assert err <= 2 * plain_err + floor, f"{what}: error {err:.3g} vs the plain path's {plain_err:.3g}"


def _grads(fn, inputs, g):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return (out, *torch.autograd.grad((out.to(g.dtype) * g).sum(), leaves))


def _heads(b, h, t, d, dtype, device):
    """q, k, v laid out as the model makes them: (B, T, H*D) memory viewed as (B, H, T, D)."""
    return [torch.randn(b, t, h, d, device=device).to(dtype).transpose(1, 2) for _ in range(3)]


ATTENTION_SHAPES = [(2, 2, 37, 32), (1, 2, 50, 64), (1, 1, 20, 128), (1, 1, 16, 32), (2, 1, 1, 64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_flash_attention_matches_plain_causal_attention(device, dtype, shape):
    if device == "cuda":
        shape = (shape[0], shape[1], shape[2] * 7, shape[3])  # ragged, several real tiles
    q, k, v = _heads(*shape, dtype, device)
    t = shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    g = torch.randn(q.shape, device=device).to(dtype).double()  # the same upstream gradient for all three
    got = _grads(triton_kernels.flash_attention, (q, k, v), g.to(dtype))
    plain = _grads(lambda a, b, c: layers.scaled_dot_product_attention(a, b, c, causal), (q, k, v), g.to(dtype))
    exact = _grads(lambda a, b, c: layers.reference_attention(a, b, c, causal), [x.double() for x in (q, k, v)], g)
    assert got[0].dtype == dtype and got[0].shape == q.shape
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), got, plain, exact, strict=True):
        _close_as_plain(a, b, c, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 48), (2, 64), (5, 1, 128), (4, 1000)])
def test_fused_rmsnorm_matches_plain_rmsnorm(device, dtype, shape):
    d = shape[-1]
    x = (torch.randn(shape, device=device) * 3).to(dtype)
    w = (1 + 0.3 * torch.randn(d, device=device)).to(dtype)
    g = torch.randn(shape, device=device).to(dtype).double()

    def norm(kernels):
        def run(x, w):
            n = layers.RMSNorm(d, eps=1e-5, device=device, dtype=w.dtype, kernels=kernels)
            return torch.func.functional_call(n, {"weight": w}, (x,))

        return run

    got = _grads(norm("triton"), (x, w), g.to(dtype))
    plain = _grads(norm("torch"), (x, w), g.to(dtype))
    exact = _grads(norm("torch"), (x.double(), w.double()), g)
    assert got[0].dtype == dtype
    for name, a, b, c in zip(("out", "dx", "dw"), got, plain, exact, strict=True):
        _close_as_plain(a, b, c, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,t", [(32, 37), (64, 16), (128, 5)])
def test_fused_rope_matches_plain_rope_on_q_and_k(device, dtype, d, t):
    rope = layers.RotaryPositionalEmbedding(10000.0, d, 64, device=device)
    q, k, _ = _heads(2, 3, t, d, dtype, device)
    g = torch.randn(2, 3, t, d, device=device).to(dtype).double()

    def both(fn):
        return lambda q, k: torch.stack(fn(q, k))

    got = _grads(both(lambda q, k: triton_kernels.rope_qk(q, k, rope.cos, rope.sin)), (q, k), g.to(dtype))
    plain = _grads(both(lambda q, k: (rope(q), rope(k))), (q, k), g.to(dtype))
    exact = _grads(both(lambda q, k: (rope(q), rope(k))), (q.double(), k.double()), g)
    for name, a, b, c in zip(("out", "dq", "dk"), got, plain, exact, strict=True):
        _close_as_plain(a, b, c, name)


@pytest.mark.parametrize("device", DEVICES)
def test_model_with_triton_kernels_matches_the_plain_model(device):
    """The switch end to end: same weights, same logits and gradients (float32), and the kernels are really used."""
    seq = 40 if device == "cpu" else 256
    config = ModelConfig(vocab_size=97, context_length=seq, d_model=64, num_layers=2, num_heads=2)
    plain = TransformerLM(config, device=device)
    fused = TransformerLM(ModelConfig(**{**config.to_dict(), "kernels": "triton"}), device=device)
    fused.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 97, (2, seq), device=device)
    logits = [m(ids) for m in (plain, fused)]
    assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    for out in logits:
        out.square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not INTERPRETED, reason="runs in the interpreter child")
def test_model_with_triton_kernels_calls_each_kernel(monkeypatch):
    calls = []
    for name in ("flash_attention", "rms_norm", "rope_qk"):
        real = getattr(triton_kernels, name)
        monkeypatch.setattr(triton_kernels, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    config = ModelConfig(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=2, kernels="triton")
    TransformerLM(config)(torch.randint(0, 50, (1, 16)))
    assert sorted(set(calls)) == ["flash_attention", "rms_norm", "rope_qk"]
    assert calls.count("flash_attention") == 2 and calls.count("rope_qk") == 2 and calls.count("rms_norm") == 5


@pytest.mark.skipif(INTERPRETED, reason="the parent process checks this")
def test_triton_kernels_on_the_cpu_need_the_interpreter():
    model = TransformerLM(ModelConfig(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2,
                                      kernels="triton"))  # fmt: skip
    with pytest.raises(ValueError, match="kernels='triton' runs on CUDA tensors.*TRITON_INTERPRET=1"):
        model(torch.zeros(1, 8, dtype=torch.long))


def test_kernels_switch_rejects_bad_values():
    base = dict(vocab_size=10, context_length=8, d_model=16, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"kernels='cuda' must be one of \('torch', 'triton'\)"):
        ModelConfig(**base, kernels="cuda")
    with pytest.raises(ValueError, match="attention_backend='sdpa' must be 'scratch'"):
        ModelConfig(**base, kernels="triton", attention_backend="sdpa")
    with pytest.raises(ValueError, match="kernels='x'"):
        layers.RMSNorm(8, kernels="x")


@pytest.mark.skipif(INTERPRETED, reason="compiles for a GPU target: the parent process checks this")
@pytest.mark.parametrize(
    "dtype,head_dims",
    [
        ("bf16", (32,)),  # the TinyStories training setting, ~20 s from a cold Triton cache on 2 cores
        pytest.param("bf16", (128,), marks=pytest.mark.slow),
        pytest.param("fp32", (32, 128), marks=pytest.mark.slow),  # exact fp32 dots compile slowly (~100 s)
    ],
)
def test_kernels_compile_for_a_hopper_gpu_without_one(dtype, head_dims):
    """Triton compiles the kernels for sm_90 (H100/H200) on any machine: the GPU-only code path (the interpreter
    skips compilation) is at least well-formed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    tl = triton_kernels.tl
    dot = tl.bfloat16 if dtype == "bf16" else tl.float32
    prec = "tf32" if dtype == "bf16" else "ieee"

    def signature(kernel, consts):
        def kind(name):
            if name in consts:
                return "constexpr"
            if name in ("LSE", "DELTA", "RSTD", "DW_PARTIAL", "COS", "SIN"):
                return "*fp32"
            if name.isupper() and name not in ("H", "T", "D", "N", "HALF"):  # tensors; the rest are sizes
                return "*" + dtype
            return "fp32" if name in ("qk_scale", "sm_scale", "eps") else "i32"

        return {name: kind(name) for name in kernel.arg_names}

    cases = [(triton_kernels._rmsnorm_fwd, dict(BLOCK_D=512)), (triton_kernels._rmsnorm_bwd, dict(BLOCK_D=512))]
    cases.append((triton_kernels._rope, dict(SIGN=1.0, BLOCK_T=16, BLOCK_HALF=16)))
    for head_dim in head_dims:
        bm, bn, bd, _ = triton_kernels._attention_tiles(head_dim, torch.device("cuda"))
        tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT=dot, PREC=prec)
        cases += [
            (k, tiles)
            for k in (triton_kernels._flash_fwd, triton_kernels._flash_bwd_dkdv, triton_kernels._flash_bwd_dq)
        ]
    for kernel, consts in cases:
        source = ASTSource(fn=kernel, signature=signature(kernel, consts), constexprs=consts)
        compiled = triton_kernels.triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert compiled.asm["ptx"], kernel.fn.__name__
