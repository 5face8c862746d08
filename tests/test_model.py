"""Model layers against torch built-ins and independent float64 references, through the adapter contract.

The float64 references below are written from ../shared/INTERFACE.md alone and share no code with
cs336_basics.layers, except attention, whose plain reference lives in the package (`layers.reference_attention`)
and is checked here against torch's built-in kernel: RMSNorm `x / sqrt(mean(x^2) + eps) * g`, RoPE as complex
multiplication of the pairs (x[2k], x[2k+1]) by exp(i * pos / theta^(2k/d_k)), per-head causal attention with scores
Q K^T / sqrt(d_k), and the pre-norm LM `h = x + attn(ln1(x))`, `out = h + ffn(ln2(h))`, `ln_final`, `lm_head`.
"""

import math
import os
import re

import jaxtyping
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # built-ins are the oracles here
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from cs336_basics import layers
from cs336_basics._kernels import fast_attention
from cs336_basics.model import ModelConfig, TransformerBlock, TransformerLM

from . import adapters

LEADING_SHAPES = [(), (3,), (2, 3), (2, 1, 3)]
F32_TOL = dict(rtol=1e-5, atol=1e-5)  # the contract: float32 outputs within 1e-5 of a float64 reference
LM_TOL = dict(rtol=1e-4, atol=1e-4)  # ... and within 1e-4 for the full LM


# --------------------------------------------------------------------------------------------------------------------
# float64 references, written from the contract


def ref_rmsnorm(x: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g.double()


def ref_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Complex-number RoPE: z_k = x[2k] + i x[2k+1] times exp(i * pos * theta^(-2k/d))."""
    d = x.shape[-1]
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double())
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(1, dtype=torch.float64), positions.double().unsqueeze(-1) * freqs)
    z = z * rot
    return torch.stack((z.real, z.imag), dim=-1).flatten(-2)


def ref_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.double()
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def ref_attention(q, k, v, mask=None):
    """The package's plain reference (itself checked against F.scaled_dot_product_attention below), in float64."""
    return layers.reference_attention(q.double(), k.double(), v.double(), mask)


def ref_mha(x, wq, wk, wv, wo, num_heads, theta=None, positions=None, q_gain=None, k_gain=None, eps=1e-5):
    """Head by head: head h uses rows h*d_k:(h+1)*d_k of wq/wk/wv; outputs concatenated, then wo. With q_gain and
    k_gain (QK-norm), each head's q and k are RMS-normalized with those gains before RoPE."""
    x = x.double()
    seq, d_model = x.shape[-2], x.shape[-1]
    d_k = d_model // num_heads
    if positions is None:
        positions = torch.arange(seq)
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    heads = []
    for h in range(num_heads):
        rows = slice(h * d_k, (h + 1) * d_k)
        q, k, v = (x @ w[rows].double().T for w in (wq, wk, wv))
        if q_gain is not None:
            q, k = ref_rmsnorm(q, q_gain, eps), ref_rmsnorm(k, k_gain, eps)
        if theta is not None:
            q, k = ref_rope(q, positions, theta), ref_rope(k, positions, theta)
        heads.append(ref_attention(q, k, v, causal))
    return torch.cat(heads, dim=-1) @ wo.double().T


def ref_swiglu(x, w1, w2, w3):
    x = x.double()
    a = x @ w1.double().T
    return ((a * torch.sigmoid(a)) * (x @ w3.double().T)) @ w2.double().T


def ref_block(x, w, num_heads, theta, positions=None, prefix="", norm="pre", ffn="swiglu", eps=1e-5):
    def p(name):
        return w[prefix + name]

    def attn(h):
        wq, wk, wv, wo = (p(f"attn.{n}.weight") for n in ("q_proj", "k_proj", "v_proj", "output_proj"))
        gains = [w.get(prefix + f"attn.{n}.weight") for n in ("q_norm", "k_norm")]
        return ref_mha(h, wq, wk, wv, wo, num_heads, theta, positions, *gains, eps=eps)

    def ff(h):
        if ffn == "relu2":
            a = h.double() @ p("ffn.w1.weight").double().T
            return torch.where(a > 0, a * a, 0.0) @ p("ffn.w2.weight").double().T
        if ffn == "silu":
            a = h.double() @ p("ffn.w1.weight").double().T
            return (a * torch.sigmoid(a)) @ p("ffn.w2.weight").double().T
        return ref_swiglu(h, p("ffn.w1.weight"), p("ffn.w2.weight"), p("ffn.w3.weight"))

    x = x.double()
    if norm == "pre":
        h = x + attn(ref_rmsnorm(x, p("ln1.weight"), eps))
        return h + ff(ref_rmsnorm(h, p("ln2.weight"), eps))
    if norm == "post":
        h = ref_rmsnorm(x + attn(x), p("ln1.weight"), eps)
        return ref_rmsnorm(h + ff(h), p("ln2.weight"), eps)
    h = x + attn(x)
    return h + ff(h)


def ref_lm(ids, w, num_layers, num_heads, theta, positions=None, norm="pre", ffn="swiglu", softcap=None):
    x = w["token_embeddings.weight"].double()[ids]
    for i in range(num_layers):
        x = ref_block(x, w, num_heads, theta, positions, prefix=f"layers.{i}.", norm=norm, ffn=ffn)
    if norm != "none":
        x = ref_rmsnorm(x, w["ln_final.weight"])
    logits = x @ w["lm_head.weight"].double().T
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def random_lm_weights(vocab, d_model, d_ff, num_layers, dtype=torch.float32, scale=0.3, w3=True):
    """Contract-named random weights (not our init: the references must not depend on it)."""
    g = torch.Generator().manual_seed(1234)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    w = {"token_embeddings.weight": r(vocab, d_model) / scale}
    for i in range(num_layers):
        p = f"layers.{i}."
        w[p + "ln1.weight"] = (1 + r(d_model)).to(dtype)
        w[p + "ln2.weight"] = (1 + r(d_model)).to(dtype)
        for name in ("q_proj", "k_proj", "v_proj", "output_proj"):
            w[p + f"attn.{name}.weight"] = r(d_model, d_model)
        w[p + "ffn.w1.weight"] = r(d_ff, d_model)
        w[p + "ffn.w2.weight"] = r(d_model, d_ff)
        if w3:
            w[p + "ffn.w3.weight"] = r(d_ff, d_model)
    w["ln_final.weight"] = (1 + r(d_model)).to(dtype)
    w["lm_head.weight"] = r(vocab, d_model)
    return w


def block_weights(w: dict, i: int = 0) -> dict:
    prefix = f"layers.{i}."
    return {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------------------------------
# Linear, Embedding, RMSNorm, SiLU, SwiGLU


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("d_in,d_out", [(3, 5), (16, 8), (64, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_matches_f_linear_and_float64_reference(leading, d_in, d_out, dtype):
    w, x = torch.randn(d_out, d_in, dtype=dtype), torch.randn(*leading, d_in, dtype=dtype)
    out = adapters.run_linear(d_in=d_in, d_out=d_out, weights=w, in_features=x)
    assert out.shape == (*leading, d_out) and out.dtype == dtype
    assert_close(out, F.linear(x, w))
    assert_close(out.double(), x.double() @ w.double().T, **F32_TOL)


@pytest.mark.parametrize("leading", [(), (7,), (2, 5), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_embedding_matches_f_embedding(leading, dtype):
    w = torch.randn(11, 6, dtype=dtype)
    ids = torch.randint(0, 11, leading)
    out = adapters.run_embedding(vocab_size=11, d_model=6, weights=w, token_ids=ids)
    assert out.shape == (*leading, 6) and out.dtype == dtype
    assert torch.equal(out, F.embedding(ids, w))


@pytest.mark.parametrize("bad", [11, -1, 100])
def test_embedding_rejects_out_of_range_ids(bad):
    ids = torch.tensor([[0, 3, bad]])
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 11\), found {bad}"):
        adapters.run_embedding(vocab_size=11, d_model=4, weights=torch.randn(11, 4), token_ids=ids)


def test_embedding_rejects_float_ids():
    with pytest.raises(TypeError):  # under the tests' jaxtyping hook the annotation Int[...] catches it first
        layers.Embedding(5, 3)(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="token ids must be an integer tensor, got dtype torch.float32"):
        layers._check_token_ids(torch.tensor([0.0, 1.0]), 5)


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("d_model,eps", [(8, 1e-5), (64, 1e-6), (33, 1e-2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rmsnorm_matches_f_rms_norm_and_float64_reference(leading, d_model, eps, dtype):
    x, g = torch.randn(*leading, d_model, dtype=dtype) * 3, torch.randn(d_model, dtype=dtype)
    out = adapters.run_rmsnorm(d_model=d_model, eps=eps, weights=g, in_features=x)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, F.rms_norm(x, (d_model,), g, eps))
    assert_close(out.double(), ref_rmsnorm(x, g, eps), **F32_TOL)


def test_rmsnorm_upcasts_bfloat16_and_casts_back():
    """In bf16 the mean of squares is taken in fp32 (as LLaMA does); the result equals fp32 math rounded to bf16."""
    x = (torch.randn(4, 7, 256) * 10).to(torch.bfloat16)
    g = torch.randn(256).to(torch.bfloat16)
    out = adapters.run_rmsnorm(d_model=256, eps=1e-5, weights=g, in_features=x)
    assert out.dtype == torch.bfloat16
    expected = (ref_rmsnorm(x.float(), g.float()).float()).to(torch.bfloat16)
    # fp32 internal math can differ from the float64 reference by one bf16 rounding step at most
    assert_close(out.float(), expected.float(), rtol=2**-7, atol=1e-6)
    # all-bf16 arithmetic (no upcast) is measurably worse: the upcast is what makes the test pass
    naive = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * g
    assert (naive.float() - ref_rmsnorm(x, g).float()).abs().max() > (
        out.float() - ref_rmsnorm(x, g).float()
    ).abs().max()


def test_rmsnorm_gradcheck_float64():
    norm = layers.RMSNorm(6, eps=1e-5, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6, dtype=torch.float64))
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))
    gain = norm.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda g: torch.func.functional_call(norm, {"weight": g}, (x,)), (gain,))
    x_ref = x.detach().clone().requires_grad_()
    (norm(x) * torch.arange(36.0, dtype=torch.float64).view(2, 3, 6)).sum().backward()
    (F.rms_norm(x_ref, (6,), norm.weight.detach(), 1e-5) * torch.arange(36.0).view(2, 3, 6)).sum().backward()
    assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 17)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silu_matches_f_silu(shape, dtype):
    x = torch.randn(*shape, dtype=dtype) * 5
    assert_close(adapters.run_silu(in_features=x), F.silu(x))


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("d_model,d_ff", [(8, 24), (32, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swiglu_matches_hand_written_formula(leading, d_model, d_ff, dtype):
    w1, w2, w3 = torch.randn(d_ff, d_model), torch.randn(d_model, d_ff), torch.randn(d_ff, d_model)
    w1, w2, w3 = (w.to(dtype) / 4 for w in (w1, w2, w3))
    x = torch.randn(*leading, d_model, dtype=dtype)
    out = adapters.run_swiglu(d_model=d_model, d_ff=d_ff, w1_weight=w1, w2_weight=w2, w3_weight=w3, in_features=x)
    assert_close(out, F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2))
    assert_close(out.double(), ref_swiglu(x, w1, w2, w3), **F32_TOL)


# --------------------------------------------------------------------------------------------------------------------
# softmax and attention


@pytest.mark.parametrize("shape,dim", [((7,), 0), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), -1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_matches_f_softmax(shape, dim, dtype):
    x = torch.randn(*shape, dtype=dtype) * 4
    out = adapters.run_softmax(in_features=x, dim=dim)
    assert out.dtype == dtype
    assert_close(out, F.softmax(x, dim=dim))
    assert_close(out.double(), ref_softmax(x, dim), **F32_TOL)


def test_softmax_is_stable_for_large_inputs():
    x = torch.tensor([[1000.0, 1000.0, -1000.0], [1e30, 0.0, 0.0], [-1e4, -1e4 + 1, -1e4]])
    out = adapters.run_softmax(in_features=x, dim=-1)
    assert torch.isfinite(out).all()
    assert_close(out, F.softmax(x.double(), dim=-1).float())


def test_softmax_upcasts_bfloat16():
    x = (torch.randn(6, 300) * 8).to(torch.bfloat16)
    out = adapters.run_softmax(in_features=x, dim=-1)
    assert out.dtype == torch.bfloat16
    assert_close(out, F.softmax(x.float(), dim=-1).to(torch.bfloat16), rtol=0, atol=0)


@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=12),
    st.floats(-1e3, 1e3, allow_nan=False),
)
def test_softmax_sums_to_one_and_is_shift_invariant(values, shift):
    x = torch.tensor(values, dtype=torch.float64)
    p = layers.softmax(x, dim=0)
    assert (p >= 0).all()
    assert abs(p.sum().item() - 1) < 1e-12
    assert_close(layers.softmax(x + shift, dim=0), p, rtol=1e-9, atol=1e-12)


def test_softmax_gradcheck_float64():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layers.softmax(t, dim=1), (x,))
    assert torch.autograd.gradcheck(lambda t: layers.softmax(t, dim=-1), (x,))


def test_softmax_backward_matches_f_softmax_in_bfloat16_and_float32():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 50).to(dtype).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        g = torch.randn(4, 50).to(dtype)
        (layers.softmax(x, -1) * g).sum().backward()
        (F.softmax(x_ref.float(), -1).to(dtype) * g).sum().backward()
        assert x.grad.dtype == dtype
        assert_close(x.grad.float(), x_ref.grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


ATTENTION_SHAPES = [  # (leading dims, queries, keys, d_k, d_v)
    ((), 4, 4, 8, 8),
    ((2,), 5, 7, 8, 3),
    ((2, 3), 6, 6, 16, 16),
    ((2, 2, 3), 3, 9, 4, 5),
]


@pytest.mark.parametrize("leading,tq,tk,d_k,d_v", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_with_random_bool_mask_matches_torch_and_reference(leading, tq, tk, d_k, d_v, dtype):
    q, k, v = torch.randn(*leading, tq, d_k), torch.randn(*leading, tk, d_k), torch.randn(*leading, tk, d_v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mask = torch.rand(*leading, tq, tk) > 0.4
    mask[..., 0] = True  # every query may attend somewhere
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=mask)
    assert out.shape == (*leading, tq, d_v) and out.dtype == dtype
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert_close(out.double(), ref_attention(q, k, v, mask), **F32_TOL)


@pytest.mark.parametrize("leading", [(), (3,), (2, 4)])
def test_sdpa_causal_mask_matches_is_causal(leading):
    t = 9
    q, k, v = (torch.randn(*leading, t, 8) for _ in range(3))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=causal)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sdpa_without_mask_and_with_broadcast_mask():
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 2)
    assert_close(adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=None), ref_attention(q, k, v).float())
    mask = torch.rand(5, 6) > 0.5  # broadcast over every leading dim
    mask[:, 0] = True
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=mask)
    assert_close(out.double(), ref_attention(q, k, v, mask), **F32_TOL)
    wide = torch.rand(4, 1, 3, 5, 6) > 0.5  # a mask with more leading dims than Q, K, V
    wide[..., 0] = True
    out = adapters.run_scaled_dot_product_attention(Q=q, K=k, V=v, mask=wide)
    assert out.shape == (4, 2, 3, 5, 2)
    assert_close(out.double(), ref_attention(q, k, v, wide), **F32_TOL)


def test_sdpa_gradients_match_torch():
    q, k, v = (torch.randn(2, 3, 7, 8, requires_grad=True) for _ in range(3))
    mask = torch.rand(7, 7) > 0.3
    mask[:, 0] = True
    g = torch.randn(2, 3, 7, 8)
    grads = torch.autograd.grad((layers.scaled_dot_product_attention(q, k, v, mask) * g).sum(), (q, k, v))
    expected = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * g).sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        assert_close(got, want, **F32_TOL)


def test_sdpa_gradcheck_float64_with_mask_and_broadcast():
    q = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # broadcast over the leading dim
    v = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 4, 5) > 0.4
    mask[..., 0] = True
    assert torch.autograd.gradcheck(lambda a, b, c: layers.scaled_dot_product_attention(a, b, c, mask), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: layers.scaled_dot_product_attention(a, b, c), (q, k, v))


def _banded_causal(t: int, window: int) -> torch.Tensor:
    i = torch.arange(t)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


@pytest.mark.parametrize("seq", [128, 200, 257])
@pytest.mark.parametrize("kind", ["causal", "window", "random_prefix"])
def test_sdpa_long_masked_sequences_match_torch_values_and_gradients(seq, kind):
    """Long (Tq, Tk) masks take the blocked CPU path (query blocks skip keys they cannot see): same numbers."""
    if kind == "causal":
        mask = torch.ones(seq, seq, dtype=torch.bool).tril()
    elif kind == "window":
        mask = _banded_causal(seq, 50)
    else:  # arbitrary pattern inside the causal triangle, every row keeps key 0
        mask = torch.ones(seq, seq, dtype=torch.bool).tril() & (torch.rand(seq, seq) > 0.5)
        mask[:, 0] = True
    q, k, v = (torch.randn(2, 3, seq, 8, requires_grad=True) for _ in range(3))
    out = layers.scaled_dot_product_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(out, expected, **F32_TOL)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * g).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_sdpa_long_causal_under_bfloat16_autocast_matches_torch():
    """Training under CPU bf16 autocast: the blocked path's values and gradients track the fused kernel's."""
    seq = 192
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    q, k, v = (torch.randn(2, 4, seq, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 4, seq, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layers.scaled_dot_product_attention(q, k, v, causal)
        expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad((out.float() * g).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected.float() * g).sum(), (q, k, v))
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.bfloat16
        assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


def test_sdpa_long_causal_gradcheck_float64_with_broadcast():
    seq = 130  # three query blocks, the last one short
    q = torch.randn(2, seq, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(seq, 2, dtype=torch.float64, requires_grad=True)  # broadcast over the leading dim
    v = torch.randn(2, seq, 3, dtype=torch.float64, requires_grad=True)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    out = layers.scaled_dot_product_attention(q, k, v, causal)
    assert_close(out, ref_attention(q, k, v, causal), rtol=1e-12, atol=1e-12)
    check = torch.autograd.gradcheck  # fast_mode: random projections instead of the full 1560 x 780 Jacobian
    assert check(lambda a, b, c: layers.scaled_dot_product_attention(a, b, c, causal), (q, k, v), fast_mode=True)


def test_sdpa_long_mask_with_a_fully_masked_row_gives_nan_like_the_formula():
    seq = 192
    mask = torch.ones(seq, seq, dtype=torch.bool).tril()
    mask[150] = False
    q, k, v = (torch.randn(seq, 4) for _ in range(3))
    out = layers.scaled_dot_product_attention(q, k, v, mask)
    assert torch.isnan(out[150]).all()
    assert torch.isfinite(out[:150]).all() and torch.isfinite(out[151:]).all()


@pytest.mark.parametrize("leading,tq,tk,d_k,d_v", ATTENTION_SHAPES)
def test_reference_attention_matches_torch_in_float64_values_and_gradients(leading, tq, tk, d_k, d_v):
    q, k = torch.randn(*leading, tq, d_k, dtype=torch.float64), torch.randn(*leading, tk, d_k, dtype=torch.float64)
    v = torch.randn(*leading, tk, d_v, dtype=torch.float64)
    mask = torch.rand(*leading, tq, tk) > 0.4
    mask[..., 0] = True
    for t in (q, k, v):
        t.requires_grad_(True)
    out = layers.reference_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(out, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    for got, want in zip(grads, torch.autograd.grad((expected * g).sum(), (q, k, v)), strict=True):
        assert_close(got, want, rtol=1e-10, atol=1e-10)


def _count_blocked_calls(monkeypatch) -> list:
    calls = []
    real = fast_attention._Attention._blocked_forward

    def counting(ctx, *args):
        calls.append(args[0].shape)
        return real(ctx, *args)

    monkeypatch.setattr(fast_attention._Attention, "_blocked_forward", staticmethod(counting))
    return calls


def test_blocked_cpu_attention_path_is_taken_for_long_causal_masks_only(monkeypatch):
    """The blocked path is the CPU speed-up: causal masks from 2 blocks of queries on take it, short ones don't."""
    calls = _count_blocked_calls(monkeypatch)
    n = 2 * fast_attention._BLOCK_ROWS
    q = torch.randn(2, n, 8)
    layers.scaled_dot_product_attention(q, q, q, torch.ones(n, n, dtype=torch.bool).tril())
    assert len(calls) == 1
    short = n - 1
    layers.scaled_dot_product_attention(q[:, :short], q[:, :short], q[:, :short], torch.ones(short, short).bool())
    full = torch.ones(n, n, dtype=torch.bool)  # nothing to skip: the plain path
    layers.scaled_dot_product_attention(q, q, q, full)
    assert len(calls) == 1
    # and the model's own attention takes it (TinyStories context 256: 4 blocks)
    mha = layers.MultiHeadSelfAttention(32, 4, max_seq_len=256, theta=10000.0)
    mha(torch.randn(1, 256, 32))
    assert len(calls) == 2 and calls[-1][-2] == 256


def test_token_id_checks_do_not_read_back_from_the_device():
    """Off the CPU the range check is queued on the device, not read back (a sync per call on a GPU): on the meta
    device, where a read-back is impossible, embedding and RoPE at given positions still run."""
    emb = layers.Embedding(11, 4, device="meta")
    assert emb(torch.randint(0, 11, (2, 5), device="meta")).shape == (2, 5, 4)
    rope = layers.RotaryPositionalEmbedding(10000.0, 4, 8, device="meta")
    x = torch.randn(2, 5, 4, device="meta")
    assert rope(x, torch.randint(0, 8, (2, 5), device="meta")).shape == (2, 5, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_token_id_checks_on_cuda_do_not_sync():
    model = TransformerLM(ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=1, num_heads=2), "cuda")
    ids = torch.randint(0, 50, (2, 8), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(ids, torch.arange(8, device="cuda").expand(2, 8))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sdpa_rejects_non_bool_mask():
    q = torch.randn(3, 4)
    # the package's own message, or (under the tests' jaxtyping hook) the Bool[...] annotation of `mask`
    with pytest.raises(TypeError, match="mask must be a bool tensor|typechecking parameter 'mask'"):
        layers.scaled_dot_product_attention(q, q, q, torch.ones(3, 3))


@pytest.mark.skipif(os.environ.get("CS336_JAXTYPING") == "0", reason="runtime shape checks turned off")
def test_jaxtyping_hook_checks_shapes_at_runtime():
    """tests/conftest.py installs runtime jaxtyping checks: Q's d_k=4 against K's d_k=5 fails at the call."""
    with pytest.raises(jaxtyping.TypeCheckError, match="d_k"):
        layers.scaled_dot_product_attention(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 4))
    with pytest.raises(jaxtyping.TypeCheckError, match="in_indices"):
        TransformerLM(ModelConfig(**SMALL))(torch.zeros(2, 3, 4, dtype=torch.long))  # (batch, seq) only


# --------------------------------------------------------------------------------------------------------------------
# RoPE


@pytest.mark.parametrize("leading", [(), (2,), (2, 3), (1, 2, 2)])
@pytest.mark.parametrize("d_k,theta", [(2, 10000.0), (8, 10000.0), (16, 500.0)])
def test_rope_matches_complex_reference_at_arbitrary_positions(leading, d_k, theta):
    seq, max_seq_len = 6, 64
    x = torch.randn(*leading, seq, d_k)
    positions = torch.randint(0, max_seq_len, (*leading, seq))
    out = adapters.run_rope(d_k=d_k, theta=theta, max_seq_len=max_seq_len, in_query_or_key=x, token_positions=positions)
    assert out.shape == x.shape
    assert_close(out.double(), ref_rope(x, positions, theta), **F32_TOL)


def test_rope_positions_broadcast_over_leading_dims():
    """Positions (seq,) apply to every row of a (batch, heads, seq, d_k) input."""
    x = torch.randn(2, 3, 5, 8)
    positions = torch.tensor([4, 0, 9, 9, 1])
    out = adapters.run_rope(d_k=8, theta=100.0, max_seq_len=10, in_query_or_key=x, token_positions=positions)
    assert_close(out.double(), ref_rope(x, positions.expand(2, 3, 5), 100.0), **F32_TOL)


def test_rope_tables_match_complex_reference_and_are_not_persistent():
    rope = layers.RotaryPositionalEmbedding(10000.0, 8, 32)
    angles = torch.polar(torch.ones(32, 4, dtype=torch.float64), ref_rope_angles(8, 32, 10000.0))
    assert_close(rope.cos.double(), angles.real, rtol=1e-14, atol=1e-14)
    assert_close(rope.sin.double(), angles.imag, rtol=1e-14, atol=1e-14)
    assert rope.state_dict() == {}


def test_rope_is_float64_exact_for_float64_inputs():
    """A float64 input gets float64 tables: agreement with the complex reference to ~1e-15, not float32's ~1e-8."""
    rope = layers.RotaryPositionalEmbedding(10000.0, 16, 2048)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    positions = torch.randint(0, 2048, (2, 9))
    assert_close(rope(x, positions), ref_rope(x, positions, 10000.0), rtol=1e-12, atol=1e-12)


def ref_rope_angles(d_k: int, max_seq_len: int, theta: float) -> torch.Tensor:
    return torch.arange(max_seq_len, dtype=torch.float64)[:, None] / theta ** (
        torch.arange(0, d_k, 2, dtype=torch.float64) / d_k
    )


def test_rope_without_positions_uses_0_to_seq_and_keeps_dtype():
    rope = layers.RotaryPositionalEmbedding(10000.0, 8, 16)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    assert_close(rope(x), ref_rope(x, torch.arange(5), 10000.0))
    assert rope(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert rope(x).dtype == torch.float64


def test_rope_gradcheck_float64():
    rope = layers.RotaryPositionalEmbedding(100.0, 6, 12)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 12, (2, 5))
    assert torch.autograd.gradcheck(lambda t: rope(t, positions), (x,))


def test_rope_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d_k=5 must be even"):
        layers.RotaryPositionalEmbedding(10000.0, 5, 8)
    with pytest.raises(ValueError, match="theta=0.0 must be > 0"):
        layers.RotaryPositionalEmbedding(0.0, 4, 8)
    rope = layers.RotaryPositionalEmbedding(10000.0, 4, 8)
    with pytest.raises(ValueError, match=r"token_positions must be in \[0, 8\), found 8"):
        rope(torch.randn(2, 4), torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_seq_len=8"):
        rope(torch.randn(9, 4))
    with pytest.raises(ValueError, match="expected d_k=4"):
        rope(torch.randn(3, 6))


# --------------------------------------------------------------------------------------------------------------------
# Multi-head attention


def mha_weights(d_model: int, dtype=torch.float32):
    return {name: torch.randn(d_model, d_model, dtype=dtype) / math.sqrt(d_model) for name in ("q", "k", "v", "o")}


@pytest.mark.parametrize("leading", [(), (2,), (2, 3)])
@pytest.mark.parametrize("d_model,num_heads", [(16, 4), (24, 3), (8, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mha_matches_per_head_float64_reference(leading, d_model, num_heads, dtype):
    w = mha_weights(d_model, dtype)
    x = torch.randn(*leading, 7, d_model, dtype=dtype)
    out = adapters.run_multihead_self_attention(
        d_model=d_model,
        num_heads=num_heads,
        q_proj_weight=w["q"],
        k_proj_weight=w["k"],
        v_proj_weight=w["v"],
        o_proj_weight=w["o"],
        in_features=x,
    )
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out.double(), ref_mha(x, w["q"], w["k"], w["v"], w["o"], num_heads), **F32_TOL)


@pytest.mark.parametrize("leading", [(), (2,), (2, 3)])
@pytest.mark.parametrize("with_positions", [True, False])
def test_mha_with_rope_matches_reference(leading, with_positions):
    d_model, num_heads, seq, max_seq_len, theta = 32, 4, 6, 20, 10000.0
    w = mha_weights(d_model)
    x = torch.randn(*leading, seq, d_model)
    positions = torch.randint(0, max_seq_len, (*leading, seq)) if with_positions else None
    out = adapters.run_multihead_self_attention_with_rope(
        d_model=d_model,
        num_heads=num_heads,
        max_seq_len=max_seq_len,
        theta=theta,
        q_proj_weight=w["q"],
        k_proj_weight=w["k"],
        v_proj_weight=w["v"],
        o_proj_weight=w["o"],
        in_features=x,
        token_positions=positions,
    )
    expected = ref_mha(x, w["q"], w["k"], w["v"], w["o"], num_heads, theta, positions)
    assert_close(out.double(), expected, **F32_TOL)


def test_mha_is_causal():
    """Changing token t changes no output before t."""
    attn = layers.MultiHeadSelfAttention(16, 4, 12, 10000.0)
    x = torch.randn(1, 8, 16)
    y = x.clone()
    y[0, 5] += 1.0
    out_x, out_y = attn(x), attn(y)
    assert torch.equal(out_x[0, :5], out_y[0, :5])
    assert not torch.allclose(out_x[0, 5:], out_y[0, 5:])


def test_mha_gradcheck_float64_with_rope():
    attn = layers.MultiHeadSelfAttention(8, 2, 6, 100.0, dtype=torch.float64)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: attn(t, torch.tensor([[0, 1, 2, 3, 4], [5, 3, 1, 0, 2]])), (x,))


def test_mha_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by num_heads=3"):
        layers.MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="RoPE needs max_seq_len"):
        layers.MultiHeadSelfAttention(8, 2, theta=10000.0)
    with pytest.raises(ValueError, match="attention_backend='flash' must be 'scratch' or 'sdpa'"):
        layers.MultiHeadSelfAttention(8, 2, attention_backend="flash")
    with pytest.raises(ValueError, match="rope.d_k=8 must equal"):
        layers.MultiHeadSelfAttention(8, 2, rope=layers.RotaryPositionalEmbedding(10000.0, 8, 4))
    with pytest.raises(ValueError, match="num_heads=0 must be a positive integer"):
        layers.MultiHeadSelfAttention(8, 0)


# --------------------------------------------------------------------------------------------------------------------
# Blocks and the LM against the float64 reference

SMALL = dict(vocab_size=37, context_length=12, d_model=16, num_layers=2, num_heads=4, d_ff=24, rope_theta=10000.0)


def small_lm_weights(dtype=torch.float32, **overrides):
    cfg = {**SMALL, **overrides}
    return random_lm_weights(cfg["vocab_size"], cfg["d_model"], cfg["d_ff"], cfg["num_layers"], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seq", [1, 7, 12])
def test_transformer_block_matches_float64_reference(dtype, seq):
    w = block_weights(small_lm_weights(dtype))
    x = torch.randn(3, seq, 16, dtype=dtype)
    out = adapters.run_transformer_block(
        d_model=16, num_heads=4, d_ff=24, max_seq_len=12, theta=10000.0, weights=w, in_features=x
    )
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out.double(), ref_block(x, w, 4, 10000.0), **F32_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 5), (3, 12)])
def test_transformer_lm_matches_float64_reference(dtype, batch, seq):
    """Weights named by the contract load into TransformerLM; logits within 1e-4 of an independent float64 LM."""
    w = small_lm_weights(dtype)
    ids = torch.randint(0, SMALL["vocab_size"], (batch, seq))
    logits = adapters.run_transformer_lm(**SMALL, weights=w, in_indices=ids)
    assert logits.shape == (batch, seq, SMALL["vocab_size"]) and logits.dtype == dtype
    assert_close(logits.double(), ref_lm(ids, w, 2, 4, 10000.0), **LM_TOL)


def test_transformer_lm_cs336_shape_matches_reference():
    """The CS336 test configuration (vocab 10000, d_model 64, 3 layers, 2 heads, d_ff 128, context 16)."""
    cfg = dict(vocab_size=10000, context_length=16, d_model=64, num_layers=3, num_heads=2, d_ff=128, rope_theta=10000.0)
    w = random_lm_weights(10000, 64, 128, 3, scale=0.15)
    ids = torch.randint(0, 10000, (4, 12))
    logits = adapters.run_transformer_lm(**cfg, weights=w, in_indices=ids)
    assert_close(logits.double(), ref_lm(ids, w, 3, 2, 10000.0), **LM_TOL)


def test_transformer_lm_token_positions_match_reference():
    config = ModelConfig(**SMALL)
    model = TransformerLM(config)
    w = small_lm_weights()
    model.load_state_dict(w)
    ids = torch.randint(0, 37, (2, 6))
    positions = torch.tensor([[3, 4, 5, 6, 7, 8], [0, 2, 4, 6, 8, 10]])
    assert_close(model(ids, positions).double(), ref_lm(ids, w, 2, 4, 10000.0, positions=positions), **LM_TOL)


def test_transformer_lm_rejects_bad_input():
    model = TransformerLM(ModelConfig(**SMALL))
    with pytest.raises(ValueError, match=r"sequence length 13\b.*exceeds context_length=12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 37\), found 37"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 37\), found -2"):
        model(torch.tensor([[-2, 3]]))
    with pytest.raises(ValueError, match=r"token_positions must be in \[0, 12\), found 12"):
        model(torch.tensor([[1, 2]]), torch.tensor([[0, 12]]))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(num_heads=3), "d_model=16 must be divisible by num_heads=3"),
        (dict(d_model=0), "d_model=0 must be a positive integer"),
        (dict(vocab_size=-5), "vocab_size=-5 must be a positive integer"),
        (dict(context_length=2.5), "context_length=2.5 must be a positive integer"),
        (dict(d_ff=0), "d_ff=0 must be a positive integer"),
        (dict(norm="middle"), "norm='middle' must be one of"),
        (dict(positions="alibi"), "positions='alibi' must be one of"),
        (dict(ffn="relu"), "ffn='relu' must be one of"),
        (dict(attention_backend="flash"), "attention_backend='flash' must be one of"),
        (dict(d_model=12, num_heads=4), "RoPE needs an even head dim"),
    ],
)
def test_model_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**SMALL, **overrides})


def test_layer_constructors_reject_bad_values():
    with pytest.raises(ValueError, match="in_features=0 must be a positive integer"):
        layers.Linear(0, 3)
    with pytest.raises(ValueError, match="embedding_dim=-1 must be a positive integer"):
        layers.Embedding(4, -1)
    with pytest.raises(ValueError, match="eps=0 must be > 0"):
        layers.RMSNorm(4, eps=0)
    with pytest.raises(ValueError, match=re.escape("norm='sandwich' must be one of ('pre', 'post', 'none')")):
        TransformerBlock(8, 2, 16, norm="sandwich")
    with pytest.raises(ValueError, match=re.escape("ffn='geglu' must be one of ('swiglu', 'silu', 'relu2')")):
        TransformerBlock(8, 2, 16, ffn="geglu")


# --------------------------------------------------------------------------------------------------------------------
# state_dict contract and initialization


def test_state_dict_keys_and_shapes_are_the_contract():
    model = TransformerLM(ModelConfig(**SMALL))
    v, d, f = SMALL["vocab_size"], SMALL["d_model"], SMALL["d_ff"]
    expected = {"token_embeddings.weight": (v, d), "ln_final.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(SMALL["num_layers"]):
        p = f"layers.{i}."
        expected |= {p + "ln1.weight": (d,), p + "ln2.weight": (d,)}
        expected |= {p + f"attn.{n}.weight": (d, d) for n in ("q_proj", "k_proj", "v_proj", "output_proj")}
        expected |= {p + "ffn.w1.weight": (f, d), p + "ffn.w2.weight": (d, f), p + "ffn.w3.weight": (f, d)}
    state = model.state_dict()
    assert {k: tuple(t.shape) for k, t in state.items()} == expected
    block = TransformerBlock(d, 4, f, 12, 10000.0)
    assert set(block.state_dict()) == {k[len("layers.0.") :] for k in expected if k.startswith("layers.0.")}


def test_load_state_dict_of_contract_named_weights_round_trips():
    w = small_lm_weights()
    model = TransformerLM(ModelConfig(**SMALL))
    model.load_state_dict(w)  # strict: every contract name present, nothing extra
    for key, value in model.state_dict().items():
        assert torch.equal(value, w[key]), key


@pytest.mark.parametrize("d_in,d_out", [(256, 512), (1000, 300)])
def test_linear_init_is_truncated_normal_with_glorot_std(d_in, d_out):
    w = layers.Linear(d_in, d_out).weight.detach()
    std = math.sqrt(2 / (d_in + d_out))
    # a normal truncated at ±3σ has std 0.9866σ; within 10% of σ is the handout's tolerance
    assert abs(w.std().item() / std - 1) < 0.1
    assert w.abs().max().item() <= 3 * std + 1e-7
    assert abs(w.mean().item()) < 0.05 * std
    assert w.abs().max().item() > 2.5 * std  # truncated at 3σ, not at a much smaller bound


def test_embedding_init_is_std_one_truncated_at_3():
    w = layers.Embedding(1000, 64).weight.detach()
    assert abs(w.std().item() - 1) < 0.1
    assert w.abs().max().item() <= 3.0 and w.abs().max().item() > 2.5


def test_rmsnorm_gains_start_at_one_and_model_init_follows_the_handout():
    assert torch.equal(layers.RMSNorm(7).weight.detach(), torch.ones(7))
    model = TransformerLM(ModelConfig(**SMALL))
    for name, p in model.named_parameters():
        if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
            assert torch.equal(p.detach(), torch.ones_like(p)), name
        elif name == "token_embeddings.weight":
            assert p.abs().max() <= 3.0
        else:
            d_out, d_in = p.shape
            assert p.abs().max() <= 3 * math.sqrt(2 / (d_in + d_out)) + 1e-7, name


def test_init_uses_given_dtype_and_rope_has_no_parameters():
    model = TransformerLM(ModelConfig(**SMALL), dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.float64
    assert not any("rope" in k or "cos" in k or "sin" in k for k in model.state_dict())


# --------------------------------------------------------------------------------------------------------------------
# Architecture switches


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_norm_placement_switch_matches_reference(norm):
    config = ModelConfig(**SMALL, norm=norm)
    model = TransformerLM(config)
    w = small_lm_weights()
    if norm == "none":
        w = {k: v for k, v in w.items() if "ln" not in k}
    model.load_state_dict(w)
    ids = torch.randint(0, 37, (2, 9))
    expected = ref_lm(ids, w, 2, 4, 10000.0, norm=norm)
    # Without norms the residual stream grows layer by layer (logits ~500 here), and float32 rounding grows with
    # it: the absolute tolerance scales with the output's magnitude (the pre/post models' logits are ~5, so 1e-4).
    tol = dict(rtol=LM_TOL["rtol"], atol=LM_TOL["atol"] * max(1.0, expected.abs().max().item() / 5))
    assert_close(model(ids).double(), expected, **tol)
    if norm != "pre":  # the switch changes the function, not just the parameter list
        pre = ref_lm(ids, small_lm_weights(), 2, 4, 10000.0, norm="pre")
        assert not torch.allclose(model(ids).double(), pre, atol=1e-3)


def test_positions_none_has_no_rope_and_is_permutation_invariant_over_the_prefix():
    """Without positions, one causal attention layer sees the prefix as a set: permuting tokens 0..t-1 leaves the
    output at t unchanged (with RoPE it does not)."""
    one_layer = {**SMALL, "num_layers": 1}
    nope = TransformerLM(ModelConfig(**one_layer, positions="none"))
    assert nope.layers[0].attn.rope is None
    w = small_lm_weights(num_layers=1)
    nope.load_state_dict(w)
    ids = torch.tensor([[3, 9, 14, 20, 5]])
    permuted = torch.tensor([[20, 3, 14, 9, 5]])
    assert_close(nope(ids)[0, -1], nope(permuted)[0, -1], rtol=1e-5, atol=1e-5)
    assert_close(nope(ids).double(), ref_lm(ids, w, 1, 4, theta=None), **LM_TOL)
    deep = TransformerLM(ModelConfig(**SMALL, positions="none"))
    w2 = small_lm_weights()
    deep.load_state_dict(w2)
    assert_close(deep(ids).double(), ref_lm(ids, w2, 2, 4, theta=None), **LM_TOL)
    rope = TransformerLM(ModelConfig(**one_layer))
    rope.load_state_dict(w)
    assert not torch.allclose(rope(ids)[0, -1], rope(permuted)[0, -1], atol=1e-4)


def test_ffn_silu_switch_uses_4x_width_and_no_gate():
    model = TransformerLM(ModelConfig(**{**SMALL, "d_ff": None}, ffn="silu"))
    state = model.state_dict()
    assert state["layers.0.ffn.w1.weight"].shape == (4 * 16, 16)
    assert state["layers.0.ffn.w2.weight"].shape == (16, 4 * 16)
    assert not any("w3" in k for k in state)
    w = random_lm_weights(37, 16, 64, 2, w3=False)
    model.load_state_dict(w)
    ids = torch.randint(0, 37, (2, 7))
    assert_close(model(ids).double(), ref_lm(ids, w, 2, 4, 10000.0, ffn="silu"), **LM_TOL)


def test_default_d_ff_for_swiglu_is_8_3_d_model_rounded_to_64():
    assert ModelConfig(**{**SMALL, "d_ff": None, "d_model": 512, "num_heads": 16}).resolved_d_ff == 1408
    assert ModelConfig(**{**SMALL, "d_ff": None}).resolved_d_ff == 64


def test_tied_embeddings_share_one_matrix():
    model = TransformerLM(ModelConfig(**SMALL, tie_embeddings=True))
    assert model.token_embeddings.weight is model.lm_head.weight
    untied = TransformerLM(ModelConfig(**SMALL))
    assert model.num_parameters() == untied.num_parameters() - 37 * 16
    # one update moves both the input table and the output projection
    ids = torch.randint(0, 37, (2, 5))
    model(ids).sum().backward()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert torch.equal(model.token_embeddings.weight, model.lm_head.weight)
    # the shared matrix keeps lm_head's initialization (std sqrt(2/(V+d))), not the embedding's std 1
    assert model.lm_head.weight.grad is not None


def test_sdpa_backend_matches_scratch_path():
    """The opt-in fused attention (attention_backend="sdpa") gives the scratch model's logits and gradients."""
    scratch = TransformerLM(ModelConfig(**SMALL))
    fused = TransformerLM(ModelConfig(**SMALL, attention_backend="sdpa"))
    fused.load_state_dict(scratch.state_dict())
    ids = torch.randint(0, 37, (3, 12))
    out_s, out_f = scratch(ids), fused(ids)
    assert_close(out_f, out_s, **F32_TOL)
    out_s.square().mean().backward()
    out_f.square().mean().backward()
    for (name, p_s), p_f in zip(scratch.named_parameters(), fused.parameters(), strict=True):
        assert_close(p_f.grad, p_s.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lm_gradients_match_builtin_autograd_reference():
    """Our hand-written backwards (attention, softmax) agree with autograd through the float64 reference."""
    w = {k: v.double().requires_grad_() for k, v in small_lm_weights().items()}
    model = TransformerLM(ModelConfig(**SMALL), dtype=torch.float64)
    model.load_state_dict({k: v.detach() for k, v in w.items()})
    ids = torch.randint(0, 37, (2, 10))
    ref_lm(ids, w, 2, 4, 10000.0).square().mean().backward()
    model(ids).square().mean().backward()
    for name, p in model.named_parameters():
        assert_close(p.grad, w[name].grad, rtol=1e-9, atol=1e-12, msg=name)


# --------------------------------------------------------------------------------------------------------------------
# Snapshots (fixed seeds; refresh only with --update-snapshots)


def _numpy_weights(module: torch.nn.Module, seed: int, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random weights for every state-dict entry from numpy's PCG64 stream, which (unlike torch's init and
    randint streams) is the same in every torch version, so snapshots pin our numerics and nothing else."""
    rng = np.random.default_rng(seed)
    return {
        name: torch.from_numpy(rng.standard_normal(tuple(t.shape)) * scale).to(t.dtype)
        for name, t in module.state_dict().items()
    }


def test_transformer_lm_snapshot(numpy_snapshot):
    model = TransformerLM(ModelConfig(**SMALL))
    model.load_state_dict(_numpy_weights(model, seed=42))
    ids = torch.from_numpy(np.random.default_rng(43).integers(0, 37, size=(2, 12)))
    numpy_snapshot.assert_match({"ids": ids, "logits": model(ids)}, rtol=1e-5, atol=1e-6)


def test_transformer_block_snapshot(numpy_snapshot):
    block = TransformerBlock(16, 4, 24, 12, 10000.0)
    block.load_state_dict(_numpy_weights(block, seed=7))
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((2, 12, 16))).float()
    numpy_snapshot.assert_match({"x": x, "out": block(x)}, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# The modern recipe's switches (docs/recipe.md): QK-norm, ReLU², logit soft-cap, zero-initialized projections


def switch_weights(dtype=torch.float32, qk_norm=False, ffn="swiglu"):
    """Contract-named random weights plus random QK-norm gains (one per head dim, shared by the heads)."""
    w = small_lm_weights(dtype, **({"d_ff": 32} if ffn == "relu2" else {}))
    if ffn == "relu2":
        w = {k: v for k, v in w.items() if "ffn.w3" not in k}
    g = torch.Generator().manual_seed(99)
    d_k = SMALL["d_model"] // SMALL["num_heads"]
    for i in range(SMALL["num_layers"]) if qk_norm else ():
        for name in ("q_norm", "k_norm"):
            w[f"layers.{i}.attn.{name}.weight"] = (1 + 0.3 * torch.randn(d_k, generator=g)).to(dtype)
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "switches",
    [
        dict(qk_norm=True),
        dict(ffn="relu2", d_ff=32),
        dict(logit_softcap=3.0),
        dict(qk_norm=True, ffn="relu2", d_ff=32, logit_softcap=3.0, zero_init_proj=True),
    ],
)
def test_switches_match_the_float64_reference(dtype, switches):
    """Each switch (and all together) against the float64 reference LM written from its formula."""
    config = ModelConfig(**{**SMALL, **switches})
    model = TransformerLM(config, dtype=dtype)
    w = switch_weights(dtype, config.qk_norm, config.ffn)
    model.load_state_dict(w)  # strict: the switch adds exactly these parameters
    ids = torch.randint(0, SMALL["vocab_size"], (2, 9))
    expected = ref_lm(ids, w, 2, 4, 10000.0, ffn=config.ffn, softcap=config.logit_softcap)
    assert_close(model(ids).double(), expected, **LM_TOL)
    if config.logit_softcap:
        assert model(ids).abs().max() < config.logit_softcap


@pytest.mark.parametrize(
    "switches", [dict(qk_norm=True), dict(ffn="relu2", d_ff=8), dict(logit_softcap=0.5), dict(zero_init_proj=True)]
)
def test_switches_gradcheck_float64(switches):
    """Gradients of every parameter and of the embedding output, by finite differences, on a tiny float64 LM."""
    tiny = dict(vocab_size=11, context_length=5, d_model=8, num_layers=1, num_heads=2, d_ff=8)
    config = ModelConfig(**{**tiny, **switches})
    torch.manual_seed(0)
    model = TransformerLM(config, dtype=torch.float64)
    with torch.no_grad():  # away from zero init and unit gains, so every path carries a gradient
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    names, params = zip(*model.named_parameters(), strict=True)
    ids = torch.tensor([[1, 4, 2, 9, 0]])

    def loss(*values):
        out = torch.func.functional_call(model, dict(zip(names, values, strict=True)), (ids,))
        return out.sin().sum()

    # fast_mode: the Jacobian checked along random directions (one per output), not column by column
    assert torch.autograd.gradcheck(loss, tuple(p.detach().clone().requires_grad_() for p in params), fast_mode=True)


def test_qk_norm_is_per_head_and_before_rope():
    """Scaling one head's q (or k) rows leaves the output unchanged: RMSNorm per head undoes it."""
    attn = layers.MultiHeadSelfAttention(16, 4, 12, 10000.0, qk_norm=True)
    x = torch.randn(2, 7, 16)
    out = attn(x)
    with torch.no_grad():
        attn.q_proj.weight[4:8] *= 5.0
        attn.k_proj.weight[:4] *= 0.5
    assert_close(attn(x), out, rtol=1e-4, atol=1e-5)
    plain = layers.MultiHeadSelfAttention(16, 4, 12, 10000.0)
    assert not hasattr(plain, "q_norm") and "q_norm.weight" not in plain.state_dict()


def test_zero_init_proj_starts_every_block_as_the_identity():
    config = ModelConfig(**SMALL, zero_init_proj=True)
    torch.manual_seed(0)
    model = TransformerLM(config)
    for layer in model.layers:
        assert not layer.attn.output_proj.weight.any() and not layer.ffn.w2.weight.any()
        assert layer.attn.q_proj.weight.any() and layer.ffn.w1.weight.any()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 6))
    x = model.token_embeddings(ids)
    assert_close(model(ids), model.lm_head(model.ln_final(x)))
    model(ids).logsumexp(-1).sum().backward()  # the projections still learn: their gradient is not zero
    assert model.layers[0].attn.output_proj.weight.grad.abs().sum() > 0
    assert model.layers[0].ffn.w2.weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    default = TransformerLM(ModelConfig(**SMALL))
    assert default.layers[0].attn.output_proj.weight.any()


def test_switches_are_off_by_default_and_validated():
    config = ModelConfig(**SMALL)
    assert (config.qk_norm, config.logit_softcap, config.zero_init_proj, config.ffn) == (False, None, False, "swiglu")
    assert ModelConfig(**SMALL, logit_softcap=0).logit_softcap is None  # 0 = off, saved as None
    assert ModelConfig(**SMALL, logit_softcap=30).logit_softcap == 30.0
    assert ModelConfig(**{**SMALL, "d_ff": None}, ffn="relu2").resolved_d_ff == 4 * SMALL["d_model"]
    with pytest.raises(ValueError, match=r"logit_softcap=-1 must be a number > 0"):
        ModelConfig(**SMALL, logit_softcap=-1)
    with pytest.raises(ValueError, match=r"logit_softcap='15' must be a number > 0"):
        ModelConfig(**SMALL, logit_softcap="15")
    with pytest.raises(ValueError, match="qk_norm=1 must be true or false"):
        ModelConfig(**SMALL, qk_norm=1)
    with pytest.raises(ValueError, match="zero_init_proj='yes' must be true or false"):
        ModelConfig(**SMALL, zero_init_proj="yes")
