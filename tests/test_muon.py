"""Muon against torch.optim.Muon and a float64 SVD; the warmup-stable-decay schedule; the combined optimizer."""

import copy

import pytest
import torch
from torch.testing import assert_close

from cs336_basics.optimizer import (
    NS_COEFFICIENTS,
    AdamW,
    MultiOptimizer,
    Muon,
    get_lr_wsd_schedule,
    muon_lr_scale,
    newton_schulz,
)

SHAPES = [(24, 40), (40, 24), (32, 32)]


def run_pair(shape, steps: int, ours_kwargs: dict, torch_kwargs: dict, seed: int = 0):
    """The same parameter trained `steps` steps by our Muon and torch's on the same gradients."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours, theirs = Muon([a], **ours_kwargs), torch.optim.Muon([b], **torch_kwargs)
    for _ in range(steps):
        grad = torch.randn(shape, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    return a.detach(), b.detach(), ours


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [1, 10])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.02),
        dict(lr=0.01, weight_decay=0.0, momentum=0.9, nesterov=False, adjust_lr_fn="match_rms_adamw"),
        dict(lr=0.05, weight_decay=0.3, adjust_lr_fn="spectral_unclamped"),
        dict(lr=0.02, adjust_lr_fn="original", ns_steps=3),
    ],
)
def test_muon_matches_torch_muon_in_bfloat16(shape, steps, kwargs):
    """torch.optim.Muon's Newton-Schulz runs in bfloat16; ours with ns_dtype=bfloat16 takes the same steps (the
    same bfloat16 ops in the same order), within bfloat16 rounding of the update."""
    ours, theirs, _ = run_pair(shape, steps, dict(kwargs, ns_dtype=torch.bfloat16), kwargs)
    assert_close(ours, theirs, rtol=1e-5, atol=steps * kwargs["lr"] * 2 * 2**-8)


def ns_float64(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The iteration written on the singular values: U diag(p^steps(s / |g|_F)) Vᵀ from a float64 SVD."""
    a, b, c = NS_COEFFICIENTS
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / torch.linalg.matrix_norm(g.double())
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return u @ torch.diag(s) @ vh


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (64, 64)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_newton_schulz_is_the_polynomial_on_the_singular_values(shape, dtype, tol):
    """NS(G) = U p⁵(S/|G|_F) Vᵀ, against a float64 SVD, within the working dtype's precision."""
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = newton_schulz(g, dtype=dtype)
    assert out.dtype == dtype and out.shape == g.shape
    assert_close(out.double(), ns_float64(g), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_singular_values_sit_in_the_promised_band(dtype):
    """After 5 steps every singular value of a full-rank input lies in the band the quintic maps (s_min, 1] into
    (computed from the scalar iteration, about [0.68, 1.13]): the update is orthogonal up to that band."""
    g = torch.randn(64, 256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    s_in = torch.linalg.svdvals(g) / torch.linalg.matrix_norm(g)
    grid = torch.linspace(float(s_in.min()), 1.0, 100_001, dtype=torch.float64)
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        grid = a * grid + b * grid**3 + c * grid**5
    lo, hi = float(grid.min()), float(grid.max())
    assert 0.6 < lo < 0.75 and 1.05 < hi < 1.25  # the band the coefficients are known for
    s_out = torch.linalg.svdvals(newton_schulz(g, dtype=dtype).double())
    slack = 0.02 if dtype == torch.bfloat16 else 1e-4
    assert lo - slack <= float(s_out.min()) and float(s_out.max()) <= hi + slack


def test_newton_schulz_of_zero_is_zero():
    assert torch.equal(newton_schulz(torch.zeros(4, 6), dtype=torch.float32), torch.zeros(4, 6))


def test_muon_in_float32_follows_the_float64_formula():
    """Ten steps in float32 against the update written out in float64 (momentum, Nesterov, decay, scale)."""
    shape, lr, wd, mu = (12, 20), 0.02, 0.1, 0.95
    g = torch.Generator().manual_seed(5)
    w = torch.nn.Parameter(torch.randn(shape, generator=g))
    ref, buf = w.detach().double().clone(), torch.zeros(shape, dtype=torch.float64)
    opt = Muon([w], lr=lr, weight_decay=wd, momentum=mu, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)
    for _ in range(10):
        grad = torch.randn(shape, generator=g)
        w.grad = grad.clone()
        opt.step()
        buf = mu * buf + (1 - mu) * grad.double()
        update = ns_float64((1 - mu) * grad.double() + mu * buf)
        ref = ref * (1 - lr * wd) - lr * 0.2 * 20**0.5 * update
    assert_close(w.detach().double(), ref, rtol=0, atol=1e-4)


def test_muon_lr_scale_matches_torch():
    from torch.optim._muon import _adjust_lr  # the oracle's own function (tests only)

    for shape in [(8, 32), (32, 8), (16, 16)]:
        for fn in (None, "original", "match_rms_adamw", "spectral_unclamped"):
            assert muon_lr_scale(shape, fn) == _adjust_lr(1.0, fn, torch.Size(shape))


def test_muon_default_ns_dtype_is_float32_on_the_cpu():
    ours, _, opt = run_pair((8, 12), 2, dict(lr=0.02, ns_dtype=torch.float32), dict(lr=0.02))
    auto, _, _ = run_pair((8, 12), 2, dict(lr=0.02), dict(lr=0.02))
    assert torch.equal(ours, auto)


def test_muon_rejects_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="only 2-D parameters"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="momentum=1.0"):
        Muon([w], momentum=1.0)
    with pytest.raises(ValueError, match="adjust_lr_fn='rms'"):
        Muon([w], adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="lr=-1"):
        Muon([w], lr=-1)
    with pytest.raises(ValueError, match="ns_dtype=torch.float16"):
        Muon([w], ns_dtype=torch.float16)
    with pytest.raises(ValueError, match="needs a 2-D matrix"):
        newton_schulz(torch.zeros(2, 3, 4))


def test_muon_state_dict_round_trip_continues_exactly():
    """Stopped after 4 steps, reloaded into a fresh optimizer, 4 more: the same weights as 8 straight steps."""
    g = torch.Generator().manual_seed(6)
    grads = [torch.randn(10, 6, generator=g) for _ in range(8)]
    w0 = torch.randn(10, 6, generator=g)
    a = torch.nn.Parameter(w0.clone())
    opt = Muon([a], lr=0.02)
    for grad in grads:
        a.grad = grad.clone()
        opt.step()
    b = torch.nn.Parameter(w0.clone())
    first = Muon([b], lr=0.02)
    for grad in grads[:4]:
        b.grad = grad.clone()
        first.step()
    state = copy.deepcopy(first.state_dict())
    c = torch.nn.Parameter(b.detach().clone())
    second = Muon([c], lr=0.5)
    second.load_state_dict(state)
    assert second.param_groups[0]["lr"] == 0.02
    for grad in grads[4:]:
        c.grad = grad.clone()
        second.step()
    assert torch.equal(a, c)


def test_multi_optimizer_steps_each_and_round_trips():
    m = torch.nn.Parameter(torch.randn(4, 5))
    v = torch.nn.Parameter(torch.randn(5))
    opt = MultiOptimizer(Muon([m], lr=0.1), AdamW([v], lr=0.1))
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    m.grad, v.grad = torch.ones(4, 5), torch.ones(5)
    before = (m.detach().clone(), v.detach().clone())
    opt.step()
    assert not torch.equal(m, before[0]) and not torch.equal(v, before[1])
    opt.zero_grad()
    assert m.grad is None and v.grad is None
    state = opt.state_dict()
    fresh = MultiOptimizer(Muon([m], lr=0.1), AdamW([v], lr=0.1))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.optimizers[0].state[m]["momentum_buffer"], opt.optimizers[0].state[m]["momentum_buffer"])
    with pytest.raises(ValueError, match="holds 1 optimizers' states, this run has 2"):
        fresh.load_state_dict({"optimizers": [state["optimizers"][0]]})
    with pytest.raises(ValueError, match="holds none"):
        fresh.load_state_dict(AdamW([v]).state_dict())


# --------------------------------------------------------------------------------------------------------------------
# Warmup-stable-decay


def test_wsd_schedule_worked_example():
    args = dict(max_learning_rate=1.0, min_learning_rate=0.0, warmup_iters=10, total_iters=100, decay_frac=0.2)
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 50: 1.0, 80: 1.0, 85: 0.75, 90: 0.5, 100: 0.0, 120: 0.0}
    for it, lr in expected.items():
        assert get_lr_wsd_schedule(it, **args) == pytest.approx(lr), it
    floor = dict(args, min_learning_rate=0.1)
    assert get_lr_wsd_schedule(90, **floor) == pytest.approx(0.55)
    assert get_lr_wsd_schedule(200, **floor) == 0.1


def test_wsd_schedule_is_monotone_pieces_and_continuous():
    args = dict(max_learning_rate=3e-3, min_learning_rate=3e-4, warmup_iters=7, total_iters=53, decay_frac=0.3)
    lrs = [get_lr_wsd_schedule(it, **args) for it in range(60)]
    peak = lrs.index(max(lrs))
    assert lrs[: peak + 1] == sorted(lrs[: peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(abs(x - y) for x, y in zip(lrs, lrs[1:], strict=False)) <= 3e-3 / 7 + 1e-12


def test_wsd_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="decay_frac=1.5"):
        get_lr_wsd_schedule(1, 1.0, 0.0, 0, 10, 1.5)
    with pytest.raises(ValueError, match="must fit in total_iters"):
        get_lr_wsd_schedule(1, 1.0, 0.0, 9, 10, 0.2)
    with pytest.raises(ValueError, match="warmup_iters=-1"):
        get_lr_wsd_schedule(1, 1.0, 0.0, -1, 10, 0.2)
