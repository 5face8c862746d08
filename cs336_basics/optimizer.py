"""AdamW (decoupled weight decay) and the cosine learning-rate schedule with linear warmup."""

import math
from collections.abc import Callable, Iterable

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), step for step the update of PyTorch's built-in AdamW:

        theta <- theta * (1 - lr * weight_decay)
        m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2
        theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State per parameter: `step` (int), `exp_avg` (m), `exp_avg_sq` (v); created lazily at the first step.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: lr={lr}; must be >= 0")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: eps={eps}; must be >= 0")
        if len(betas) != 2:
            raise ValueError(f"Invalid betas={betas}: must be a pair (beta1, beta2)")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}; must be in [0, 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: weight_decay={weight_decay}; must be >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:  # lazy init
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]

                p.mul_(1 - lr * weight_decay)  # decoupled weight decay, before the Adam step
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**t)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss


def get_lr_cosine_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, cosine_cycle_iters: int
) -> float:
    """Learning rate at step `it`: linear warmup, cosine decay to the minimum, then the minimum.

    Example (max 1, min 0.1, warmup 10, cycle 100): it=5 -> 0.5, it=10 -> 1.0, it=55 -> 0.55, it>=100 -> 0.1.
    """
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters={warmup_iters} must be >= 0")
    if cosine_cycle_iters < warmup_iters:
        raise ValueError(f"cosine_cycle_iters={cosine_cycle_iters} must be >= warmup_iters={warmup_iters}")
    # 1) linear warmup from 0
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    # 2) cosine annealing from max to min
    if it <= cosine_cycle_iters and cosine_cycle_iters > warmup_iters:
        progress = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)
        return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    if it == warmup_iters:  # a zero-length cycle: the warmup ends at the maximum
        return max_learning_rate
    # 3) after the cycle, the minimum
    return min_learning_rate
