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

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from cs336_basics._kernels import fast_attention
from cs336_basics._kernels.fast_attention import softmax_inplace_
from cs336_basics.config import AttentionBackend, KernelKind, check_kernels, check_positive
from cs336_basics.kv_cache import LayerKVCache

# --------------------------------------------------------------------------------------------------------------------
# Basic layers


class Linear(nn.Module):
    """y = x @ W.T with W of shape (out_features, in_features); no bias."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        check_positive(in_features=in_features, out_features=out_features)
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
        check_positive(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
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
        check_positive(d_model=d_model)
        if not eps > 0:
            raise ValueError(f"eps={eps} must be > 0")
        check_kernels(kernels)
        self.d_model = d_model
        self.eps = eps
        self.kernels = kernels
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        if self.kernels == "triton" and (triton := triton_kernels()).supports(x):
            return triton.rms_norm(x, self.weight, self.eps)  # the fused kernel; the lines below are its oracle
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


class ReLU2FeedForward(nn.Module):
    """The squared-ReLU feed-forward of Primer and modded-nanogpt: w2(relu(w1 x)²); d_ff = 4 * d_model by default."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: Float[Tensor, " ... d_model"]) -> Float[Tensor, " ... d_model"]:
        return self.w2(self.w1(x).clamp(min=0).square())


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
        check_positive(d_k=d_k, max_seq_len=max_seq_len)
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
    check_positive(max_seq_len=max_seq_len, d_model=d_model)
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


def triton_kernels():
    """The opt-in Triton kernels (`kernels="triton"`), imported on first use: importing triton costs about as much as
    importing torch, and only a model that asks for them pays it."""
    from cs336_basics._kernels import triton_kernels

    return triton_kernels


def causal_mask(queries: int, keys: int, device=None) -> Bool[Tensor, " queries keys"]:
    """True where a query may attend: the `queries` are the last of the `keys` positions (a KV cache holds the
    `keys - queries` before them), so query i sees keys 0 .. keys - queries + i."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril_(diagonal=keys - queries)


def _scratch_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # The default: the from-scratch attention above, with the causal mask (none needed for a single query).
    queries, keys = q.shape[-2], k.shape[-2]
    mask = None if queries == 1 else causal_mask(queries, keys, q.device)
    return scaled_dot_product_attention(q, k, v, mask)


def _sdpa_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # Opt-in fast path (ModelConfig.attention_backend="sdpa"): PyTorch's fused kernel (flash / memory-efficient
    # attention on GPUs). tests/test_model.py and tests/test_generation.py check its parity with the default.
    import torch.nn.functional as F  # the only torch.nn.functional use in the package

    queries, keys = q.shape[-2], k.shape[-2]
    if queries == keys:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = None if queries == 1 else causal_mask(queries, keys, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (is_causal would align to the top left)


def _triton_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # Opt-in fast path (ModelConfig.kernels="triton"): FlashAttention-2 in Triton for (B, H, T, D) inputs without a
    # cache; anything else takes the from-scratch code, which stays the kernel's oracle (tests/test_triton.py).
    if _triton_fits(q, v) and q.shape[-2] == k.shape[-2]:
        return triton_kernels().flash_attention(q, k, v)
    return _scratch_causal_attention(q, k, v)


def _triton_fits(q: Tensor, v: Tensor) -> bool:
    return q.dim() == 4 and triton_kernels().supports(q) and q.dtype == v.dtype


ATTENTION_KERNELS = {"scratch": _scratch_causal_attention, "sdpa": _sdpa_causal_attention}


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with optional RoPE on Q and K.

    q_proj/k_proj/v_proj/output_proj are (d_model, d_model); rows of q/k/v_proj are the heads stacked, head 0 first.
    Pass `rope` (a RotaryPositionalEmbedding, possibly shared between layers) or `max_seq_len` and `theta` to
    build one; with neither, attention is position-free (a "NoPE" model). `qk_norm`: each head's q and k go through
    an RMSNorm over the head dim (gains `q_norm`, `k_norm`, shared by the heads) before RoPE, which bounds the
    attention logits (OLMo 2, modded-nanogpt).
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
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        check_positive(d_model=d_model, num_heads=num_heads)
        check_kernels(kernels, attention_backend)
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        if attention_backend not in ("scratch", "sdpa"):
            raise ValueError(f"attention_backend={attention_backend!r} must be 'scratch' or 'sdpa'")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_k = d_model // num_heads
        self.attention_backend = attention_backend
        self.kernels = kernels
        # The kernel, chosen once: the from-scratch code (default) or an opt-in fused one, each parity-tested.
        self._attend = _triton_causal_attention if kernels == "triton" else ATTENTION_KERNELS[attention_backend]
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.d_k, eps=norm_eps, device=device, dtype=dtype)
            self.k_norm = RMSNorm(self.d_k, eps=norm_eps, device=device, dtype=dtype)
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
        """With `kv_cache`, x holds the tokens after the P cached ones: they sit at positions P .. P+T-1 (RoPE rotates
        them so), the cache grows by T, and the T queries attend to all P + T keys, causally."""
        q, k, v = (
            rearrange(p(x), "... t (h d) -> ... h t d", h=self.num_heads)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        past = 0 if kv_cache is None else kv_cache.length
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self._rotate(q, k, token_positions, past)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (..., H, P+T, D): the cached keys first
        if self.qk_hook is not None:
            self.qk_hook(q, k)  # (introspect.py: the q and all k that attention uses)
        out = self._attend(q, k, v)
        return self.output_proj(rearrange(out, "... h t d -> ... t (h d)"))

    def _rotate(self, q: Tensor, k: Tensor, token_positions: Tensor | None, past: int) -> tuple[Tensor, Tensor]:
        if token_positions is None:
            if past == 0 and self.kernels == "triton" and _triton_fits(q, q):
                return triton_kernels().rope_qk(q, k, self.rope.cos, self.rope.sin)  # the plain rotation is its oracle
            token_positions = torch.arange(past, past + q.shape[-2], device=q.device) if past else None
        # The same rotation for every head: positions (..., T) broadcast over the head axis.
        positions = None if token_positions is None else token_positions.unsqueeze(-2)
        return self.rope(q, positions), self.rope(k, positions)


# --------------------------------------------------------------------------------------------------------------------
# Validation helpers


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
