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
    # log softmax(x)[t] = x[t] - logsumexp(x); logsumexp subtracts the row max, so large logits cannot overflow.
    nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    if keep is None:
        return nll.mean()
    return (nll * keep).sum() / keep.sum().clamp(min=1)


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
