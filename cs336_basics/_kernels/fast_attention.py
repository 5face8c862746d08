"""The fast from-scratch attention behind `layers.scaled_dot_product_attention`: a hand-written backward and a
blocked CPU path.

Contract: `attention(Q, K, V, mask)` returns the same values and gradients as `layers.reference_attention`, the plain
`softmax(Q K^T / sqrt(d_k), masked) V` differentiated by autograd, for any broadcastable leading dims and any bool
mask (True = may attend); a query row with no allowed key gives NaN, as the formula does. The softmax accumulates in
at least float32. Checked by tests/test_model.py (`test_sdpa_*`: against the reference, torch's built-in kernel and
float64 gradcheck, including long masks that take the blocked path, and a test that the blocked path is taken).

Only plain tensor ops, like the rest of the package.
"""

import math

import torch
from torch import Tensor


def attention(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(Q K^T / sqrt(d_k), masked) V with the hand-written backward (see the module docstring)."""
    return _Attention.apply(Q, K, V, mask)


def softmax_inplace_(x: Tensor, dim: int) -> Tensor:
    """exp(x - max) / sum, overwriting x (a fresh float tensor that nobody else holds)."""
    x.sub_(x.amax(dim=dim, keepdim=True)).exp_()
    return x.div_(x.sum(dim=dim, keepdim=True))


class _Attention(torch.autograd.Function):
    """softmax(Q K^T / sqrt(d_k) masked) V with a hand-written backward.

    Why: on a CPU, autograd through matmul -> scale -> masked_fill -> softmax -> matmul keeps several (..., Tq, Tk)
    temporaries and makes a pass over the score matrix for each; here the scale is folded into Q, the mask and
    the softmax work in place, and only P = softmax(S) is kept. The backward is the flash-attention algebra:
        dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K / sqrt(d_k),  dK = dS^T Q / sqrt(d_k)
    (rowsum(dP * P) = rowsum(dO * O) because O = P V). Shapes: Q (..., Tq, D), K (..., Tk, D), V (..., Tk, Dv).

    With one (Tq, Tk) mask on the CPU (the causal mask of MultiHeadSelfAttention), queries go in blocks of
    _BLOCK_ROWS and each block only touches the keys up to the last one it may attend to: for a causal mask that
    skips ~3/8 of the work, and most of the masked scores (whose exp(-inf) is slow on CPUs) are never formed.
    """

    @staticmethod
    def forward(ctx, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor | None) -> Tensor:
        scale = 1.0 / math.sqrt(Q.shape[-1])
        ctx.scale = scale
        ctx.block_ends = _block_key_ends(mask, Q.shape[-2], K.shape[-2])
        if ctx.block_ends is not None:
            return _Attention._blocked_forward(ctx, Q, K, V, mask)
        scores = (Q * scale) @ K.transpose(-2, -1)  # (..., Tq, Tk), a fresh tensor: safe to overwrite
        acc = torch.promote_types(scores.dtype, torch.float32)
        scores = scores.to(acc)
        if mask is not None:
            shape = torch.broadcast_shapes(scores.shape, mask.shape)
            if shape != scores.shape:  # a mask with more leading dims than Q K^T: grow the scores first
                scores = scores.expand(shape).clone()
            scores.masked_fill_(~mask, float("-inf"))
        probs = softmax_inplace_(scores, dim=-1).to(V.dtype)  # P (..., Tq, Tk)
        out = probs @ V  # (..., Tq, Dv)
        ctx.save_for_backward(Q, K, V, probs, out)
        return out

    @staticmethod
    def _blocked_forward(ctx, Q: Tensor, K: Tensor, V: Tensor, mask: Tensor) -> Tensor:
        q_scaled = Q * ctx.scale
        outs, probs = [], []
        for r0, end in zip(range(0, Q.shape[-2], _BLOCK_ROWS), ctx.block_ends, strict=True):
            r1 = r0 + _BLOCK_ROWS
            scores = q_scaled[..., r0:r1, :] @ K[..., :end, :].transpose(-2, -1)  # (..., rows, end)
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
            scores.masked_fill_(~mask[r0:r1, :end], float("-inf"))
            p = softmax_inplace_(scores, dim=-1).to(V.dtype)
            probs.append(p)
            outs.append(p @ V[..., :end, :])
        out = torch.cat(outs, dim=-2)  # (..., Tq, Dv)
        ctx.save_for_backward(Q, K, V, out, *probs)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        if ctx.block_ends is not None:
            return _Attention._blocked_backward(ctx, d_out)
        Q, K, V, probs, out = ctx.saved_tensors
        d_out = d_out.to(V.dtype)
        dQ = dK = dV = None
        if ctx.needs_input_grad[2]:
            dV = _sum_to(probs.transpose(-2, -1) @ d_out, V.shape)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            acc = torch.promote_types(probs.dtype, torch.float32)
            delta = (d_out.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True)  # rowsum(dO * O), (..., Tq, 1)
            d_scores = (d_out @ V.transpose(-2, -1)).to(acc).sub_(delta).mul_(probs)  # dS (..., Tq, Tk)
            if ctx.needs_input_grad[0]:
                dQ = _sum_to((d_scores.to(K.dtype) @ K).mul_(ctx.scale), Q.shape)
            if ctx.needs_input_grad[1]:
                dK = _sum_to((d_scores.transpose(-2, -1).to(Q.dtype) @ Q).mul_(ctx.scale), K.shape)
        return dQ, dK, dV, None

    @staticmethod
    def _blocked_backward(ctx, d_out: Tensor):
        Q, K, V, out, *probs = ctx.saved_tensors
        d_out = d_out.to(V.dtype)
        lead = d_out.shape[:-2]  # the broadcast leading dims of Q, K and V
        acc = torch.promote_types(probs[0].dtype, torch.float32)
        delta = (d_out.to(acc) * out.to(acc)).sum(dim=-1, keepdim=True)  # rowsum(dO * O), (..., Tq, 1)
        dQ = Q.new_empty(*lead, *Q.shape[-2:])
        # dK and dV sum one partial product per block: accumulate in at least float32, as one matmul would
        dK = K.new_zeros(*lead, *K.shape[-2:], dtype=torch.promote_types(K.dtype, torch.float32))
        dV = V.new_zeros(*lead, *V.shape[-2:], dtype=torch.promote_types(V.dtype, torch.float32))
        for r0, end, p in zip(range(0, Q.shape[-2], _BLOCK_ROWS), ctx.block_ends, probs, strict=True):
            r1 = r0 + _BLOCK_ROWS
            d_out_rows, v_keys, k_keys = d_out[..., r0:r1, :], V[..., :end, :], K[..., :end, :]
            dV[..., :end, :] += p.transpose(-2, -1) @ d_out_rows
            d_scores = (d_out_rows @ v_keys.transpose(-2, -1)).to(acc).sub_(delta[..., r0:r1, :]).mul_(p)
            dQ[..., r0:r1, :] = d_scores.to(K.dtype) @ k_keys
            dK[..., :end, :] += d_scores.transpose(-2, -1).to(Q.dtype) @ Q[..., r0:r1, :]
        needs = ctx.needs_input_grad
        return (
            _sum_to(dQ.mul_(ctx.scale), Q.shape) if needs[0] else None,
            _sum_to(dK.mul_(ctx.scale), K.shape).to(K.dtype) if needs[1] else None,
            _sum_to(dV, V.shape).to(V.dtype) if needs[2] else None,
            None,
        )


_BLOCK_ROWS = 64


def _block_key_ends(mask: Tensor | None, queries: int, keys: int) -> list[int] | None:
    """For each block of _BLOCK_ROWS queries, 1 + the last key any of them may attend to; None: don't block.

    Only for a single (queries, keys) mask on the CPU (reading it back costs a device sync elsewhere, where fused
    kernels are the fast path anyway), outside torch.compile, and only when it skips enough work. A block with no
    allowed key at all falls back to the plain path, which gives such rows NaN as the formula does.
    """
    if (
        mask is None
        or mask.device.type != "cpu"
        or mask.shape != (queries, keys)
        or queries < 2 * _BLOCK_ROWS
        or torch.compiler.is_compiling()
    ):
        return None
    last = torch.where(mask, torch.arange(1, keys + 1), 0).amax(dim=-1)  # (Tq,): 1 + last allowed key, 0: none
    ends = [int(last[r0 : r0 + _BLOCK_ROWS].max()) for r0 in range(0, queries, _BLOCK_ROWS)]
    if min(ends) == 0 or sum(ends) > 0.85 * len(ends) * keys:
        return None
    return ends


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Undo broadcasting over leading dims: sum `grad` down to `shape`."""
    return grad if grad.shape == shape else grad.sum_to_size(shape)
