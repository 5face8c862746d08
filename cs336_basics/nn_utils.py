"""Loss and gradient utilities: pure functions, no state."""

from collections.abc import Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor


def cross_entropy(
    inputs: Float[Tensor, " ... vocab_size"], targets: Int[Tensor, " ..."], ignore_index: int | None = None
) -> Float[Tensor, ""]:
    """Mean over tokens of -log softmax(inputs)[target], via log-sum-exp in (at least) float32.

    `ignore_index`, when given, drops the tokens whose target equals it from the mean (for masked losses such as
    the probes' answer-only loss). Example: inputs [[0., 0.]], targets [1] -> log 2.
    """
    if inputs.shape[:-1] != targets.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} must be targets {tuple(targets.shape)} plus a vocab dim")
    logits = inputs.reshape(-1, inputs.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = targets.reshape(-1)
    keep = None
    if ignore_index is not None:
        keep = targets != ignore_index
        targets = torch.where(keep, targets, 0)
    _check_targets(targets, logits.shape[-1])
    if keep is None:
        weights = torch.full(targets.shape, 1.0 / max(targets.numel(), 1), dtype=logits.dtype, device=logits.device)
    else:
        weights = keep.to(logits.dtype) / keep.sum().clamp(min=1)
    return _WeightedCrossEntropy.apply(logits, targets, weights)


class _WeightedCrossEntropy(torch.autograd.Function):
    """sum_i w_i * (logsumexp(x_i) - x_i[t_i]) for logits x (N, V), targets t (N,), weights w (N,) (no grad).

    log softmax(x)[t] = x[t] - logsumexp(x), and logsumexp subtracts the row max, so large logits cannot overflow.
    Why a hand-written backward: autograd through logsumexp and gather recomputes exp(x - lse) and scatters a
    one-hot into a second (N, V) tensor; here the forward keeps softmax(x) (as log_softmax does in torch) and the
    backward is one pass, dx = w * (softmax(x) - onehot(t)).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        row_max = logits.amax(dim=-1, keepdim=True)  # (N, 1)
        probs = (logits - row_max).exp_()  # (N, V), unnormalized
        sum_exp = probs.sum(dim=-1, keepdim=True)
        log_sum_exp = (sum_exp.log() + row_max).squeeze(-1)  # (N,)
        nll = log_sum_exp - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
        ctx.save_for_backward(probs.div_(sum_exp), targets, weights)
        return (nll * weights).sum()

    @staticmethod
    def backward(ctx, d_loss: Tensor):
        probs, targets, weights = ctx.saved_tensors
        row_scale = (weights * d_loss).unsqueeze(-1)  # (N, 1)
        d_logits = probs * row_scale  # a new tensor: probs stays intact for a second backward
        d_logits.scatter_add_(-1, targets.unsqueeze(-1), -row_scale)
        return d_logits, None, None


def gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale every gradient in place so that their global L2 norm is at most `max_l2_norm`.

    The scale is max_l2_norm / (norm + eps) when that is below 1 (the torch.nn.utils.clip_grad_norm_ rule);
    parameters without a gradient are skipped. Returns the norm before clipping (a 0-dim tensor), for logging.
    """
    if not max_l2_norm > 0:
        raise ValueError(f"max_l2_norm={max_l2_norm} must be > 0")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    # Sum of squares in float32 at least; no .item(), so clipping never forces a GPU sync.
    total_norm = torch.stack([g.detach().to(torch.promote_types(g.dtype, torch.float32)).square().sum() for g in grads])
    total_norm = total_norm.sum().sqrt()
    scale = (max_l2_norm / (total_norm + eps)).clamp(max=1.0)
    for g in grads:
        g.detach().mul_(scale.to(g.dtype))
    return total_norm


def _check_targets(targets: Tensor, vocab_size: int) -> None:
    if torch.compiler.is_compiling() or targets.numel() == 0:
        return
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"targets must be in [0, {vocab_size}), found {lo if lo < 0 else hi}")
