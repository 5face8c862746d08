"""AdamW (decoupled weight decay), Muon (orthogonalized momentum for hidden matrices), and the learning-rate
schedules: cosine with linear warmup, and warmup-stable-decay."""

import math
from collections.abc import Callable, Iterable

import torch

from cs336_basics.config import MUON_LR_ADJUSTMENTS


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


def get_lr_wsd_schedule(
    it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int, total_iters: int, decay_frac: float
) -> float:
    """Warmup-stable-decay ("trapezoidal"): linear warmup from 0, the maximum, then a linear decay over the last
    `decay_frac` of the `total_iters` steps to the minimum, which it keeps after that.

    Example (max 1, min 0, warmup 10, total 100, decay_frac 0.2): it=5 -> 0.5, it=10..80 -> 1.0, it=90 -> 0.5,
    it>=100 -> 0.0.
    """
    if warmup_iters < 0:
        raise ValueError(f"warmup_iters={warmup_iters} must be >= 0")
    if not 0.0 <= decay_frac <= 1.0:
        raise ValueError(f"decay_frac={decay_frac} must be in [0, 1]")
    decay_iters = decay_frac * total_iters
    if warmup_iters + decay_iters > total_iters:
        raise ValueError(
            f"warmup_iters={warmup_iters} plus the decay (decay_frac={decay_frac} of total_iters={total_iters}) "
            "must fit in total_iters"
        )
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it >= total_iters:
        return min_learning_rate
    decay_start = total_iters - decay_iters
    if it <= decay_start:
        return max_learning_rate
    return min_learning_rate + (total_iters - it) / decay_iters * (max_learning_rate - min_learning_rate)


# --------------------------------------------------------------------------------------------------------------------
# Muon: momentum, then the update orthogonalized by a Newton-Schulz iteration (Keller Jordan, 2024)

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's (a, b, c), as in torch.optim.Muon and Keller Jordan's


def newton_schulz(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """An approximation of U Vᵀ for g = U S Vᵀ (the nearest semi-orthogonal matrix), computed in `dtype`.

    g is scaled to spectral norm <= 1 (by its Frobenius norm), then each step maps X -> a X + (b A + c A²) X with
    A = X Xᵀ, i.e. every singular value s -> a s + b s³ + c s⁵. The coefficients trade exactness for speed: after
    5 steps the singular values sit in roughly [0.7, 1.2] rather than at 1 (Keller Jordan: this does not hurt).
    A wide matrix is iterated as is and a tall one transposed, so that A is the smaller Gram matrix.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype=dtype, copy=True)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A²
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A²) X
    return x.T if tall else x


def muon_lr_scale(shape: tuple[int, ...] | torch.Size, adjust_lr_fn: str | None = "original") -> float:
    """The factor Muon multiplies the learning rate by for a (fan_out, fan_in) = (A, B) matrix, as torch.optim.Muon:
    original (None) sqrt(max(1, A/B)) (Keller Jordan); match_rms_adamw 0.2·sqrt(max(A, B)) (Moonshot: the update's
    RMS matches AdamW's, so AdamW's lr and weight decay carry over); spectral_unclamped sqrt(A/B)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} must be one of {MUON_LR_ADJUSTMENTS} or None")


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device has fast bfloat16 matmuls (CUDA with bf16 support), float32 otherwise (the CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices, step for step the update of PyTorch's built-in torch.optim.Muon:

        B <- μ B + (1 - μ) g                      (momentum, an exponential average)
        U <- NS((1 - μ) g + μ B)   (Nesterov)  or  NS(B)
        θ <- θ (1 - lr · weight_decay)            (decoupled weight decay)
        θ <- θ - lr · scale(shape) · U            (see `muon_lr_scale`)

    NS is `newton_schulz` in `ns_dtype` (None: `default_ns_dtype` of each parameter's device; torch.optim.Muon
    always uses bfloat16). Use AdamW for everything that is not a hidden matrix: embeddings, the LM head, gains.
    State per parameter: `momentum_buffer`, created at the first step.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        ns_dtype: torch.dtype | None = None,
    ):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: lr={lr}; must be >= 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum={momentum}; must be in [0, 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: weight_decay={weight_decay}; must be >= 0")
        if len(ns_coefficients) != 3:
            raise ValueError(f"ns_coefficients={ns_coefficients} must be three numbers (a, b, c)")
        if not (isinstance(ns_steps, int) and 0 < ns_steps < 100):
            raise ValueError(f"ns_steps={ns_steps!r} must be an integer in [1, 99]")
        if adjust_lr_fn is not None and adjust_lr_fn not in MUON_LR_ADJUSTMENTS:
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} must be one of {MUON_LR_ADJUSTMENTS} or None")
        if ns_dtype not in (None, torch.float32, torch.bfloat16, torch.float64):
            raise ValueError(f"ns_dtype={ns_dtype} must be None (auto), torch.float32, torch.bfloat16 or torch.float64")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes only 2-D parameters; got one of shape {tuple(p.shape)} (use AdamW)")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                state = self.state[p]
                if not state:  # lazy init
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                ns_dtype = group["ns_dtype"] or default_ns_dtype(p.device)
                update = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"], ns_dtype)
                p.mul_(1 - lr * weight_decay)  # decoupled weight decay, with the unscaled lr (as torch's Muon)
                p.add_(update.to(p.dtype), alpha=-lr * muon_lr_scale(p.shape, group["adjust_lr_fn"]))
        return loss


class MultiOptimizer:
    """Several optimizers stepped as one, e.g. Muon for the hidden matrices and AdamW for the rest.

    `param_groups` lists every optimizer's groups (the same dicts, so setting a group's lr reaches its optimizer);
    `state_dict()` is {"optimizers": [each one's state_dict]}, the form `load_state_dict` takes back.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        if not optimizers:
            raise ValueError("MultiOptimizer needs at least one optimizer")
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            have = "none" if saved is None else len(saved)
            raise ValueError(
                f"optimizer state holds {have} optimizers' states, this run has {len(self.optimizers)} "
                f"({', '.join(type(o).__name__ for o in self.optimizers)}): was it saved with another --optimizer?"
            )
        for opt, state in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(state)
