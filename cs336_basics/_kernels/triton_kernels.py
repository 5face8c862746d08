"""Triton kernels for the opt-in `ModelConfig(kernels="triton")` path: causal FlashAttention-2, fused RMSNorm, and
RoPE on q and k, each forward and backward, written here.

Contract: each public function returns the values and gradients of its plain PyTorch reference in `layers`, up to
float rounding (the attention's softmax, RMSNorm and RoPE accumulate in float32, like the references):
- `flash_attention(q, k, v)` = `layers.reference_attention(q, k, v, causal mask)`, q/k/v (B, H, T, D);
- `rms_norm(x, weight, eps)` = `layers.RMSNorm.forward`, x (..., D);
- `rope_qk(q, k, cos, sin)` = `layers.RotaryPositionalEmbedding` applied to q and k at positions 0 .. T-1.
Checked by tests/test_triton.py: values and gradients against the plain path in float32 and bfloat16, ragged
sequence lengths, head dims 32/64/128, on the CPU under Triton's interpreter (TRITON_INTERPRET=1) and on CUDA.

Kernels run on CUDA tensors; CPU tensors only when TRITON_INTERPRET=1 was set before triton was first imported
(Triton reads it then: the kernels and triton's own library become interpreted; slow, for tests). Inputs must be
float32, bfloat16 or float16; `supports` says whether a tensor qualifies.
"""

import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl

    INTERPRETED = bool(triton.knobs.runtime.interpret)  # read once, as triton.jit reads it at decoration
except ImportError:  # the torch wheels for Linux bring triton; elsewhere the switch explains itself
    triton = None

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_available() -> None:
    """Raise unless Triton can be imported (ModelConfig(kernels="triton") calls this)."""
    if triton is None:
        raise ModuleNotFoundError("kernels='triton' needs the triton package (pip install triton; Linux + CUDA)")


def check_device(t: Tensor) -> None:
    """Raise unless `t` lives where the kernels can run: CUDA, or the CPU under TRITON_INTERPRET=1."""
    check_available()
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and INTERPRETED:
        return
    raise ValueError(
        f"kernels='triton' runs on CUDA tensors, got a tensor on {t.device.type!r} (on the CPU only under "
        "TRITON_INTERPRET=1 set before triton is imported: Triton's slow interpreter, for tests); use kernels='torch'"
    )


def supports(t: Tensor) -> bool:
    return t.dtype in KERNEL_DTYPES


# --------------------------------------------------------------------------------------------------------------------
# Causal FlashAttention-2. Scores are kept in base 2: s = q.k * log2(e) / sqrt(D), p = exp2(s - lse2), where the
# saved lse2 = m + log2(l) is the row's log-sum-exp in the same units (one float per query row).

if triton is not None:

    @triton.jit
    def _flash_fwd(Q, K, V, OUT, LSE, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
                   H, T, D, qk_scale,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
        start_m, bh = tl.program_id(0) * BLOCK_M, tl.program_id(1)
        b, h = bh // H, bh % H
        offs_m, offs_n, offs_d = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
        row_ok = (offs_m[:, None] < T) & (offs_d[None, :] < D)
        q_ptrs = Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok, other=0.0).to(DOT)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of the scores
        l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):  # causal: keys up to the last query
            n = start_n + offs_n
            key_ok = (n[:, None] < T) & (offs_d[None, :] < D)
            k = tl.load(K + b * sk_b + h * sk_h + n[:, None] * sk_t + offs_d[None, :], mask=key_ok, other=0.0).to(DOT)
            v = tl.load(V + b * sv_b + h * sv_h + n[:, None] * sv_t + offs_d[None, :], mask=key_ok, other=0.0).to(DOT)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where((offs_m[:, None] >= n[None, :]) & (n[None, :] < T), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)  # rescales what was accumulated under the old max
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v, input_precision=PREC)
            m_i = m_new
        acc = acc / l_i[:, None]
        o_ptrs = OUT + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :]
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=row_ok)
        tl.store(LSE + bh * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)

    @triton.jit
    def _flash_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                        sd_b, sd_h, sd_t, H, T, D, qk_scale, sm_scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
        # One block of keys; loops over the query blocks that can see it. dV = P^T dO, dK = dS^T Q / sqrt(D) with
        # dS = P * (dO V^T - delta), delta = rowsum(dO * O). DK and DV have the strides of K and V.
        start_n, bh = tl.program_id(0) * BLOCK_N, tl.program_id(1)
        b, h = bh // H, bh % H
        offs_n, offs_m, offs_d = start_n + tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
        key_ok = (offs_n[:, None] < T) & (offs_d[None, :] < D)
        k_off = b * sk_b + h * sk_h + offs_n[:, None] * sk_t + offs_d[None, :]
        v_off = b * sv_b + h * sv_h + offs_n[:, None] * sv_t + offs_d[None, :]
        k = tl.load(K + k_off, mask=key_ok, other=0.0).to(DOT)
        v = tl.load(V + v_off, mask=key_ok, other=0.0).to(DOT)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for start_m in range((start_n // BLOCK_M) * BLOCK_M, T, BLOCK_M):
            m = start_m + offs_m
            row_ok = (m[:, None] < T) & (offs_d[None, :] < D)
            q = tl.load(Q + b * sq_b + h * sq_h + m[:, None] * sq_t + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
            do = tl.load(DO + b * sd_b + h * sd_h + m[:, None] * sd_t + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
            lse = tl.load(LSE + bh * T + m, mask=m < T, other=0.0)
            delta = tl.load(DELTA + bh * T + m, mask=m < T, other=0.0)
            p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lse[:, None])
            p = tl.where((m[:, None] >= offs_n[None, :]) & (m[:, None] < T), p, 0.0)
            dv += tl.dot(tl.trans(p.to(DOT)), do, input_precision=PREC)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(DOT)), q, input_precision=PREC)
        tl.store(DK + k_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok)
        tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=key_ok)

    @triton.jit
    def _flash_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
                      sd_b, sd_h, sd_t, H, T, D, qk_scale, sm_scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   DOT: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
        # One block of queries; loops over the keys it can see. dQ = dS K / sqrt(D). DQ has the strides of Q.
        start_m, bh = tl.program_id(0) * BLOCK_M, tl.program_id(1)
        b, h = bh // H, bh % H
        offs_m, offs_n, offs_d = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
        row_ok = (offs_m[:, None] < T) & (offs_d[None, :] < D)
        q_off = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
        q = tl.load(Q + q_off, mask=row_ok, other=0.0).to(DOT)
        do = tl.load(DO + b * sd_b + h * sd_h + offs_m[:, None] * sd_t + offs_d[None, :], mask=row_ok, other=0.0).to(
            DOT
        )
        lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
        delta = tl.load(DELTA + bh * T + offs_m, mask=offs_m < T, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
            n = start_n + offs_n
            key_ok = (n[:, None] < T) & (offs_d[None, :] < D)
            k = tl.load(K + b * sk_b + h * sk_h + n[:, None] * sk_t + offs_d[None, :], mask=key_ok, other=0.0).to(DOT)
            v = tl.load(V + b * sv_b + h * sv_h + n[:, None] * sv_t + offs_d[None, :], mask=key_ok, other=0.0).to(DOT)
            p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale - lse[:, None])
            p = tl.where((offs_m[:, None] >= n[None, :]) & (n[None, :] < T), p, 0.0)
            ds = p * (tl.dot(do, tl.trans(v), input_precision=PREC) - delta[:, None])
            dq += tl.dot(ds.to(DOT), k, input_precision=PREC)
        tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok)


def _attention_tiles(head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps). Small tiles under the interpreter, so small tests cross tiles."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if device.type == "cpu":
        return 16, 16, block_d, 4
    if block_d <= 64:
        return 64, 64, block_d, 4
    return 64, 32, block_d, 8


def _dot_dtype(t: Tensor):
    """The operand type of tl.dot: the input's on CUDA (bf16 tensor cores, float32 accumulation); float32 under the
    interpreter, whose tl.dot misreads bfloat16 (stored as uint16) - exact products either way."""
    if t.device.type == "cpu":
        return tl.float32
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[t.dtype]


def _dot_precision(t: Tensor) -> str:
    """float32 operands: exact products ("ieee") unless torch allows TF32 for its own float32 matmuls."""
    return "tf32" if t.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _strides(t: Tensor) -> tuple[int, int, int]:
    assert t.stride(-1) == 1, "kernel inputs need a contiguous last dim"
    return t.stride(0), t.stride(1), t.stride(2)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, T, D = q.shape
        o = torch.empty_like(q)  # same strides as q: (B, T, H, D) memory stays a free view after the kernel
        lse = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
        bm, bn, bd, warps = _attention_tiles(D, q.device)
        qk_scale = math.log2(math.e) / math.sqrt(D)
        _flash_fwd[(triton.cdiv(T, bm), B * H)](
            q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o), H, T, D, qk_scale,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT=_dot_dtype(q), PREC=_dot_precision(q), num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        B, H, T, D = q.shape
        if do.stride(-1) != 1:
            do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).reshape(B * H, T).contiguous()  # rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bm, bn, bd, warps = _attention_tiles(D, q.device)
        qk_scale, sm_scale = math.log2(math.e) / math.sqrt(D), 1.0 / math.sqrt(D)
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(do), H, T, D, qk_scale, sm_scale)
        tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, DOT=_dot_dtype(q), PREC=_dot_precision(q), num_warps=warps)
        _flash_bwd_dkdv[(triton.cdiv(T, bn), B * H)](q, k, v, do, lse, delta, dk, dv, *common, **tiles)
        _flash_bwd_dq[(triton.cdiv(T, bm), B * H)](q, k, v, do, lse, delta, dq, *common, **tiles)
        return dq, dk, dv


@torch.compiler.disable  # a graph break under torch.compile: the kernels run as they are
def flash_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax(q k^T / sqrt(D)) v for q, k, v of one shape (B, H, T, D) and dtype; see the module docstring."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape or not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"flash_attention needs q, k, v of one (B, H, T, D) shape and dtype, got {q.shape}")
    check_device(q)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return _FlashAttention.apply(q, k, v)


# --------------------------------------------------------------------------------------------------------------------
# RMSNorm: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), in float32. Backward, with x_hat = x * rstd:
#   dx = rstd * (w dy - x_hat * mean(x_hat * w dy)),   dw = sum over rows of dy * x_hat.

if triton is not None:

    @triton.jit
    def _rmsnorm_fwd(X, W, Y, RSTD, stride_x, stride_y, D, eps, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        ok = cols < D
        x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / D + eps)
        tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=ok)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rmsnorm_bwd(X, W, DY, DX, RSTD, DW_PARTIAL, stride_x, stride_dy, stride_dx, N, D, rows_per_program,
                     BLOCK_D: tl.constexpr):  # fmt: skip
        # Each program takes a run of rows and writes its partial dw; the caller sums the partials.
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_D)
        ok = cols < D
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_D], tl.float32)
        for row in range(pid * rows_per_program, tl.minimum((pid + 1) * rows_per_program, N)):
            x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat, w_dy = x * rstd, w * dy
            dx = (w_dy - x_hat * (tl.sum(x_hat * w_dy, 0) / D)) * rstd
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=ok)
            dw += dy * x_hat
        tl.store(DW_PARTIAL + pid * D + cols, dw, mask=ok)


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]) if x.stride(-1) == 1 else x.contiguous().reshape(-1, x.shape[-1])


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rows = _rows(x)
        n, d = rows.shape
        y = torch.empty_like(rows)
        rstd = torch.empty(n, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(d)
        _rmsnorm_fwd[(n,)](rows, weight, y, rstd, rows.stride(0), y.stride(0), d, eps, BLOCK_D=block,
                               num_warps=_warps(block))  # fmt: skip
        ctx.save_for_backward(rows, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: Tensor):
        rows, weight, rstd = ctx.saved_tensors
        n, d = rows.shape
        dy = _rows(dy)
        dx = torch.empty_like(rows)
        programs = min(n, 1024 if rows.is_cuda else 4)
        per = triton.cdiv(n, programs)
        partial = torch.empty(programs, d, device=rows.device, dtype=torch.float32)
        block = triton.next_power_of_2(d)
        _rmsnorm_bwd[(programs,)](rows, weight, dy, dx, rstd, partial, rows.stride(0), dy.stride(0),
                                        dx.stride(0), n, d, per, BLOCK_D=block, num_warps=_warps(block))  # fmt: skip
        return dx.view(ctx.x_shape), partial.sum(0).to(weight.dtype), None


@torch.compiler.disable
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, in float32, cast back to x's dtype."""
    check_device(x)
    return _RMSNorm.apply(x, weight, eps)


# --------------------------------------------------------------------------------------------------------------------
# RoPE on q and k: pairs (x[2i], x[2i+1]) rotated by angle t * theta^(-2i/D); the backward rotates dy back.


if triton is not None:

    @triton.jit
    def _rope(X, Y, COS, SIN, sx_b, sx_h, sx_t, sy_b, sy_h, sy_t, H, T, HALF, SIGN: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr):  # fmt: skip
        # One (batch, head) and BLOCK_T positions. SIGN 1.0 rotates forward, -1.0 back (the backward).
        start_t, bh = tl.program_id(0) * BLOCK_T, tl.program_id(1)
        b, h = bh // H, bh % H
        t, i = start_t + tl.arange(0, BLOCK_T), tl.arange(0, BLOCK_HALF)
        ok = (t[:, None] < T) & (i[None, :] < HALF)
        cos = tl.load(COS + t[:, None] * HALF + i[None, :], mask=ok, other=0.0)
        sin = tl.load(SIN + t[:, None] * HALF + i[None, :], mask=ok, other=0.0) * SIGN
        x_ptr = X + b * sx_b + h * sx_h + t[:, None] * sx_t + 2 * i[None, :]
        x_even = tl.load(x_ptr, mask=ok, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + 1, mask=ok, other=0.0).to(tl.float32)
        y_ptr = Y + b * sy_b + h * sy_h + t[:, None] * sy_t + 2 * i[None, :]
        tl.store(y_ptr, (x_even * cos - x_odd * sin).to(Y.dtype.element_ty), mask=ok)
        tl.store(y_ptr + 1, (x_even * sin + x_odd * cos).to(Y.dtype.element_ty), mask=ok)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float) -> Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, H, T, D = x.shape
    y = torch.empty_like(x)
    block_t, block_half = 16, triton.next_power_of_2(D // 2)
    _rope[(triton.cdiv(T, block_t), B * H)](x, y, cos, sin, *_strides(x), *_strides(y), H, T, D // 2,
                                               SIGN=sign, BLOCK_T=block_t, BLOCK_HALF=block_half)  # fmt: skip
    return y


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(cos, sin)
        return _rotate(q, cos, sin, 1.0), _rotate(k, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dq: Tensor | None, dk: Tensor | None):
        cos, sin = ctx.saved_tensors
        dq = None if dq is None else _rotate(dq, cos, sin, -1.0)
        dk = None if dk is None else _rotate(dk, cos, sin, -1.0)
        return dq, dk, None, None


@torch.compiler.disable
def rope_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate q and k (B, H, T, D) at positions 0 .. T-1; cos/sin are the (>= T, D/2) tables of the RoPE module."""
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"rope_qk needs q and k of one (B, H, T, D) shape, got {q.shape} and {k.shape}")
    check_device(q)
    T = q.shape[-2]
    cos, sin = (t[:T].to(torch.float32).contiguous() for t in (cos, sin))
    return _RoPE.apply(q, k, cos, sin)
