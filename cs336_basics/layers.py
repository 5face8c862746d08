"""The layers of the Transformer language model, from scratch: only nn.Parameter, containers and plain tensor ops.

Design (CS336 Assignment 1 defaults; the switches live in model.ModelConfig, which with TransformerBlock and
TransformerLM is in model.py and stays importable from here):
- decoder-only, pre-norm blocks `h = x + attn(ln1(x))`, `out = h + ffn(ln2(h))`, then ln_final and lm_head;
- RMSNorm computed in float32 (at least) and cast back; no biases anywhere;
- rotary position embeddings on Q and K (pairs (x[2k], x[2k+1])), shared by every layer; absolute sinusoidal or
  learned positions for the ablations;
- SwiGLU feed-forward `w2(silu(w1 x) * w3 x)`;
- attention is `reference_attention` below: softmax(QKᵀ/√d, masked) V. Fast paths beside it, each parity-tested
  against it and the plain code here, which stays the default: the hand-written backward and blocked causal CPU
  path (_kernels/fast_attention.py), the opt-in fused kernel (`attention_backend="sdpa"`), and opt-in Triton kernels for
  attention, RMSNorm and RoPE on CUDA (`kernels="triton"`, _kernels/triton_kernels.py).

All weight matrices are stored (d_out, d_in) and applied as `y = x @ W.T`.

Shape letters: B batch, T sequence, H heads, D head dim (d_k), V vocabulary, "..." any leading dims.
"""

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from cs336_basics._kernels import fast_attention, triton_kernels
from cs336_basics._kernels.fast_attention import softmax_inplace_
from cs336_basics.kv_cache import LayerKVCache

# --------------------------------------------------------------------------------------------------------------------
# Basic layers


class Linear(nn.Module):
    """y = x @ W.T with W of shape (out_features, in_features); no bias."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2 / (in_features + out_features))  # trunc_normal_ at ±3σ
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: Float[Tensor, " ... d_in"]) -> Float[Tensor, " ... d_out"]:
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(nn.Module):
    """A lookup table: row i of `weight` (num_embeddings, embedding_dim) is the vector of token i."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        _check_positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)  # std 1, trunc_normal_ at ±3σ

    def forward(self, token_ids: Int[Tensor, " ..."]) -> Float[Tensor, " ... d_model"]:
        _check_token_ids(token_ids, self.num_embeddings)
        return self.weight[token_ids]

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g over the last dim, computed in (at least) float32 and cast back."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None, kernels: "KernelKind" = "torch"):
        super().__init__()
        _check_positive(d_model=d_model)
        if not eps > 0:
            raise ValueError(f"eps={eps} must be > 0")
        _check_kernels(kernels)
        self.d_model = d_model
        self.eps = eps
        self.kernels = kernels
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        if self.kernels == "triton" and triton_kernels.supports(x):
            return triton_kernels.rms_norm(x, self.weight, self.eps)  # the fused kernel; the lines below are its oracle
        in_dtype = x.dtype
        x = x.to(torch.promote_types(in_dtype, torch.float32))  # bf16/fp16 -> fp32; fp64 stays fp64
        inv_rms = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)
        return (x * inv_rms * self.weight).to(in_dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


def silu(x: Float[Tensor, " ..."]) -> Float[Tensor, " ..."]:
    """SiLU (swish): x * sigmoid(x)."""
    return x * torch.sigmoid(x)


class SwiGLU(nn.Module):
    """The gated feed-forward network of LLaMA: w2(silu(w1 x) * w3 x)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class SiLUFeedForward(nn.Module):
    """The ungated ablation of SwiGLU: w2(silu(w1 x)); use d_ff = 4 * d_model to match SwiGLU's parameter count."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(silu(self.w1(x)))


# --------------------------------------------------------------------------------------------------------------------
# Positions and attention


class RotaryPositionalEmbedding(nn.Module):
    """RoPE: rotates each pair (x[2k], x[2k+1]) by the angle pos / theta^(2k / d_k), k = 0 .. d_k/2 - 1.

    cos/sin tables for positions 0 .. max_seq_len-1 are precomputed and kept in float64 (a float32 table would cap
    a float64 model's accuracy at ~1e-8); they are derived state, so they are non-persistent buffers that never
    appear in a state_dict. Each call casts the rows it needs to the compute dtype (at least float32).
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        _check_positive(d_k=d_k, max_seq_len=max_seq_len)
        if d_k % 2 != 0:
            raise ValueError(f"d_k={d_k} must be even: RoPE rotates pairs of features")
        if not theta > 0:
            raise ValueError(f"theta={theta} must be > 0")
        self.theta = theta
        self.d_k = d_k
        self.max_seq_len = max_seq_len
        inv_freq = theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64) / d_k)  # (D/2,)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (max_seq_len, D/2)
        self.register_buffer("cos", angles.cos().to(device=device), persistent=False)
        self.register_buffer("sin", angles.sin().to(device=device), persistent=False)

    def forward(
        self, x: Float[Tensor, " ... seq d_k"], token_positions: Int[Tensor, " ... seq"] | None = None
    ) -> Float[Tensor, " ... seq d_k"]:
        if x.shape[-1] != self.d_k:
            raise ValueError(f"last dim of x is {x.shape[-1]}, expected d_k={self.d_k}")
        seq_len = x.shape[-2]
        if token_positions is None:
            if seq_len > self.max_seq_len:
                raise ValueError(f"sequence length {seq_len} exceeds max_seq_len={self.max_seq_len}")
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]  # (T, D/2)
        else:
            _check_token_ids(token_positions, self.max_seq_len, what="token_positions")
            cos, sin = self.cos[token_positions], self.sin[token_positions]  # (..., T, D/2)
        in_dtype = x.dtype
        compute_dtype = torch.promote_types(in_dtype, torch.float32)
        x, cos, sin = x.to(compute_dtype), cos.to(compute_dtype), sin.to(compute_dtype)
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # (..., T, D/2, 2)
        return rotated.flatten(-2).to(in_dtype)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"


def sinusoidal_table(max_seq_len: int, d_model: int) -> Float[Tensor, " max_seq_len d_model"]:
    """The fixed positions of "Attention Is All You Need" (§3.5), float64:
    P[pos, 2i] = sin(pos / 10000^(2i/d_model)), P[pos, 2i+1] = cos(pos / 10000^(2i/d_model))."""
    _check_positive(max_seq_len=max_seq_len, d_model=d_model)
    inv_freq = 10_000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d/2),)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (max_seq_len, ceil(d/2))
    table = torch.empty(max_seq_len, d_model, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles[:, : d_model // 2].cos()
    return table


class AbsolutePositionalEmbedding(nn.Module):
    """Absolute positions, one vector per position added to the token embeddings: `sinusoidal` (a fixed table, a
    non-persistent buffer like RoPE's) or `learned` (a trained table `weight`, as GPT-2's wpe, initialized like the
    token embeddings: std 1, truncated at ±3σ). Positions must be < max_seq_len (the context length)."""

    def __init__(self, kind: str, max_seq_len: int, d_model: int, device=None, dtype=None):
        super().__init__()
        if kind not in ("sinusoidal", "learned"):
            raise ValueError(f"kind={kind!r} must be 'sinusoidal' or 'learned'")
        self.kind = kind
        self.max_seq_len = max_seq_len
        if kind == "sinusoidal":
            table = sinusoidal_table(max_seq_len, d_model).to(device=device, dtype=dtype or torch.float32)
            self.register_buffer("table", table, persistent=False)
        else:
            self.weight = nn.Parameter(torch.empty(max_seq_len, d_model, device=device, dtype=dtype))
            nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)  # std 1, trunc_normal_ at ±3σ

    def forward(self, token_positions: Int[Tensor, " ... seq"]) -> Float[Tensor, " ... seq d_model"]:
        table = self.table if self.kind == "sinusoidal" else self.weight
        _check_token_ids(
            token_positions,
            self.max_seq_len,
            f"{self.kind} positions",
            describe=lambda bad: (
                f"position {bad} is outside the {self.kind} position table of max_seq_len={self.max_seq_len} "
                "positions (the context length); truncate the input or use a longer context_length"
            ),
        )
        return table[token_positions]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, max_seq_len={self.max_seq_len}"


def softmax(x: Float[Tensor, " ..."], dim: int) -> Float[Tensor, " ..."]:
    """Numerically stable softmax along `dim` (the max is subtracted first), computed in at least float32.

    >>> softmax(torch.tensor([0.0, 1000.0]), dim=-1)
    tensor([0., 1.])
    """
    return _Softmax.apply(x, dim)


class _Softmax(torch.autograd.Function):
    # A hand-written backward: autograd through exp/sum/div would keep three full-size intermediates alive and
    # make three passes; this keeps only the output y and uses dx = y * (dy - sum(dy * y)).
    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        acc = torch.promote_types(x.dtype, torch.float32)
        y = softmax_inplace_(x.to(acc, copy=True), dim)
        ctx.dim, ctx.in_dtype = dim, x.dtype
        ctx.save_for_backward(y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy: Tensor):
        (y,) = ctx.saved_tensors
        dy = dy.to(y.dtype)
        dx = (dy - (dy * y).sum(dim=ctx.dim, keepdim=True)).mul_(y)
        return dx.to(ctx.in_dtype), None


def reference_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """Attention as the formula reads, differentiated by autograd: the oracle of every fast attention path."""
    return attention_probabilities(Q, K, mask) @ V


def attention_probabilities(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries keys"]:
    """softmax(QKᵀ/√d_k, masked): the weights `reference_attention` puts on each key (introspect.py shows them).

    >>> attention_probabilities(torch.ones(1, 4), torch.ones(3, 4))  # equal scores: equal weights
    tensor([[0.3333, 0.3333, 0.3333]])
    """
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])  # (..., queries, keys)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # False: may not attend
    return softmax(scores, dim=-1)


def scaled_dot_product_attention(
    Q: Float[Tensor, " ... queries d_k"],
    K: Float[Tensor, " ... keys d_k"],
    V: Float[Tensor, " ... keys d_v"],
    mask: Bool[Tensor, " ... queries keys"] | None = None,
) -> Float[Tensor, " ... queries d_v"]:
    """softmax(Q K^T / sqrt(d_k)) V, where mask True means "may attend" and False scores become -inf.

    The same values and gradients as `reference_attention`, computed by `fast_attention.attention`: a hand-written
    backward that keeps only the probabilities, and on the CPU a blocked path that skips keys a block of queries
    cannot see. The softmax runs in at least float32. A query row with no allowed key gives NaN, as in the formula.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    return fast_attention.attention(Q, K, V, mask)


def _fused_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # Opt-in fast path (ModelConfig.attention_backend="sdpa"): PyTorch's fused kernel (flash / memory-efficient
    # attention on GPUs). The default is the from-scratch code above; tests/test_model.py checks their parity.
    import torch.nn.functional as F  # the only torch.nn.functional use in the package

    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


AttentionBackend = Literal["scratch", "sdpa"]
KernelKind = Literal["torch", "triton"]


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with optional RoPE on Q and K.

    q_proj/k_proj/v_proj/output_proj are (d_model, d_model); rows of q/k/v_proj are the heads stacked, head 0 first.
    Pass `rope` (a RotaryPositionalEmbedding, possibly shared between layers) or `max_seq_len` and `theta` to
    build one; with neither, attention is position-free (a "NoPE" model).
    """

    # Introspection (cs336_basics/introspect.py): when set, called with the queries (..., H, Tq, D) and keys
    # (..., H, Tk, D) that attention uses, after RoPE and with any cached keys first (Tk - Tq of them). Class-level
    # None: a plain model pays one attribute check.
    qk_hook: Callable[[Tensor, Tensor], None] | None = None

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        max_seq_len: int | None = None,
        theta: float | None = None,
        rope: RotaryPositionalEmbedding | None = None,
        attention_backend: AttentionBackend = "scratch",
        device=None,
        dtype=None,
        kernels: "KernelKind" = "torch",
    ):
        super().__init__()
        _check_positive(d_model=d_model, num_heads=num_heads)
        _check_kernels(kernels, attention_backend)
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if attention_backend not in ("scratch", "sdpa"):
            raise ValueError(f"attention_backend={attention_backend!r} must be 'scratch' or 'sdpa'")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_k = d_model // num_heads
        self.attention_backend = attention_backend
        self.kernels = kernels
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        if rope is None and theta is not None:
            if max_seq_len is None:
                raise ValueError("RoPE needs max_seq_len as well as theta")
            rope = RotaryPositionalEmbedding(theta, self.d_k, max_seq_len, device=device)
        if rope is not None and rope.d_k != self.d_k:
            raise ValueError(f"rope.d_k={rope.d_k} must equal d_model / num_heads = {self.d_k}")
        self.rope = rope

    def forward(
        self,
        x: Float[Tensor, " ... seq d_model"],
        token_positions: Int[Tensor, " ... seq"] | None = None,
        kv_cache: "LayerKVCache | None" = None,
    ) -> Float[Tensor, " ... seq d_model"]:
        q = rearrange(self.q_proj(x), "... t (h d) -> ... h t d", h=self.num_heads)
        k = rearrange(self.k_proj(x), "... t (h d) -> ... h t d", h=self.num_heads)
        v = rearrange(self.v_proj(x), "... t (h d) -> ... h t d", h=self.num_heads)
        if kv_cache is not None:
            return self._forward_cached(q, k, v, token_positions, kv_cache)
        # kernels="triton": the fused kernels for (B, H, T, D) inputs; the plain code below stays their oracle
        triton = self.kernels == "triton" and q.dim() == 4 and triton_kernels.supports(q) and q.dtype == v.dtype
        if self.rope is not None:
            if triton and token_positions is None:
                q, k = triton_kernels.rope_qk(q, k, self.rope.cos, self.rope.sin)
            else:
                # The same rotation for every head: positions (..., T) broadcast over the head axis.
                positions = None if token_positions is None else token_positions.unsqueeze(-2)
                q, k = self.rope(q, positions), self.rope(k, positions)
        if self.qk_hook is not None:
            self.qk_hook(q, k)
        seq_len = x.shape[-2]
        if self.attention_backend == "sdpa":
            out = _fused_causal_attention(q, k, v)
        elif triton:
            out = triton_kernels.flash_attention(q, k, v)
        else:
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).tril_()  # (T, T)
            out = scaled_dot_product_attention(q, k, v, causal)
        return self.output_proj(rearrange(out, "... h t d -> ... t (h d)"))

    def _forward_cached(self, q: Tensor, k: Tensor, v: Tensor, token_positions: Tensor | None, kv_cache) -> Tensor:
        # Incremental decoding: the new positions continue after the cached ones, so RoPE rotates them by their
        # absolute positions P .. P+T-1, and the T new queries attend to all P + T keys (causal within the new ones).
        past, seq_len = kv_cache.length, q.shape[-2]
        if token_positions is None:
            token_positions = torch.arange(past, past + seq_len, device=q.device)
        if self.rope is not None:
            positions = token_positions.unsqueeze(-2)
            q, k = self.rope(q, positions), self.rope(k, positions)
        k, v = kv_cache.append(k, v)  # (..., H, P+T, D)
        if self.qk_hook is not None:
            self.qk_hook(q, k)
        causal = None
        if seq_len > 1:
            causal = torch.ones(seq_len, past + seq_len, dtype=torch.bool, device=q.device).tril_(diagonal=past)
        out = scaled_dot_product_attention(q, k, v, causal)
        return self.output_proj(rearrange(out, "... h t d -> ... t (h d)"))


# --------------------------------------------------------------------------------------------------------------------
# Validation helpers


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_kernels(kernels: str, attention_backend: str = "scratch") -> None:
    """kernels: "torch" (the plain code, the default) or "triton" (the fused kernels, which need Triton)."""
    if kernels not in get_args(KernelKind):
        raise ValueError(f"kernels={kernels!r} must be one of {get_args(KernelKind)}")
    if kernels == "triton":
        triton_kernels.check_available()
        if attention_backend != "scratch":
            raise ValueError(
                f"kernels='triton' brings its own attention; attention_backend={attention_backend!r} must be 'scratch'"
            )


def _check_token_ids(ids: Tensor, upper: int, what: str = "token ids", describe=None) -> None:
    """Check every id is in [0, upper) without stalling an accelerator.

    On the CPU: ValueError naming the bad id. Elsewhere reading the answer back would be a device-to-host sync on
    every call, so the check is queued on the device (`torch._assert_async`): a bad id fails the next sync with a
    RuntimeError carrying the same rule. Skipped while compiling (it would need a graph break). `describe(bad)`,
    if given, words the CPU error.
    """
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor, got dtype {ids.dtype}")
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    if ids.device.type != "cpu":
        torch._assert_async(((ids >= 0) & (ids < upper)).all(), f"{what} must be in [0, {upper})")
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(describe(bad) if describe else f"{what} must be in [0, {upper}), found {bad}")
