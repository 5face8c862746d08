"""cross_entropy and gradient_clipping against torch built-ins, float64 references and hand-worked values."""

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - built-ins are the oracles here
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from cs336_basics.nn_utils import cross_entropy, gradient_clipping

from . import adapters


def ref_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = logits.double().reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    m = x.max(-1, keepdim=True).values
    lse = (x - m).exp().sum(-1).log() + m.squeeze(-1)
    return (lse - x[torch.arange(len(t)), t]).mean()


# --------------------------------------------------------------------------------------------------------------------
# cross_entropy


@pytest.mark.parametrize("batch,vocab", [(1, 2), (8, 5), (32, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_matches_f_cross_entropy(batch, vocab, dtype):
    logits = torch.randn(batch, vocab, dtype=dtype) * 3
    targets = torch.randint(0, vocab, (batch,))
    loss = adapters.run_cross_entropy(inputs=logits, targets=targets)
    assert loss.shape == ()
    assert_close(loss, F.cross_entropy(logits, targets))
    assert_close(loss.double(), ref_cross_entropy(logits, targets), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("leading", [(4,), (2, 3), (2, 3, 4)])
def test_cross_entropy_accepts_any_leading_dims(leading):
    logits, targets = torch.randn(*leading, 11), torch.randint(0, 11, leading)
    assert_close(cross_entropy(logits, targets), F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))


def test_cross_entropy_is_stable_for_large_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [5000.0, 5000.0, 5000.0], [-1e6, 1e6, 0.0]])
    targets = torch.tensor([1, 2, 1])
    loss = adapters.run_cross_entropy(inputs=logits, targets=targets)
    assert torch.isfinite(loss)
    assert_close(loss.double(), ref_cross_entropy(logits, targets))
    assert_close(loss, torch.tensor((1e4 + math.log(3)) / 3))


def test_cross_entropy_hand_worked_values():
    """Uniform logits over V ids cost log V; a confident correct logit costs ~0; the mean is over tokens."""
    assert_close(cross_entropy(torch.zeros(1, 2), torch.tensor([1])), torch.tensor(math.log(2)))
    assert_close(cross_entropy(torch.zeros(3, 7), torch.tensor([0, 3, 6])), torch.tensor(math.log(7)))
    # [log 1, log 3] -> softmax [1/4, 3/4]: losses -log(1/4) and -log(3/4), mean of the two
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    expected = (math.log(4) + math.log(4 / 3)) / 2
    assert_close(cross_entropy(logits, torch.tensor([0, 1])), torch.tensor(expected))


def test_cross_entropy_upcasts_bfloat16_and_returns_float32():
    logits = (torch.randn(16, 500) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 500, (16,))
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert_close(loss, F.cross_entropy(logits.float(), targets))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_gradients_match_f_cross_entropy(dtype):
    logits = (torch.randn(2, 6, 40) * 3).to(dtype).requires_grad_()
    ref = logits.detach().clone().requires_grad_()
    targets = torch.randint(0, 40, (2, 6))
    (cross_entropy(logits, targets) * 2.5).backward()
    (F.cross_entropy(ref.float().reshape(-1, 40), targets.reshape(-1)) * 2.5).backward()
    assert logits.grad.dtype == dtype
    assert_close(logits.grad, ref.grad)


def test_cross_entropy_gradcheck_float64():
    logits = (torch.randn(3, 4, 6, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, 6, (3, 4))
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets, ignore_index=int(targets[0, 0])), (logits,))


def test_cross_entropy_backward_twice_with_retain_graph():
    logits = torch.randn(5, 9, requires_grad=True)
    targets = torch.randint(0, 9, (5,))
    loss = cross_entropy(logits, targets)
    loss.backward(retain_graph=True)
    first = logits.grad.clone()
    loss.backward()
    assert_close(logits.grad, 2 * first)


def test_cross_entropy_ignore_index_matches_torch():
    logits = torch.randn(4, 5, 13, requires_grad=True)
    targets = torch.randint(0, 13, (4, 5))
    targets[0, :3] = -100
    targets[2, 1] = -100
    ref = logits.detach().clone().requires_grad_()
    loss = cross_entropy(logits, targets, ignore_index=-100)
    expected = F.cross_entropy(ref.reshape(-1, 13), targets.reshape(-1), ignore_index=-100)
    assert_close(loss, expected)
    loss.backward()
    expected.backward()
    assert_close(logits.grad, ref.grad)
    everything_ignored = torch.full((2, 3), -100)
    assert cross_entropy(torch.randn(2, 3, 13), everything_ignored, ignore_index=-100).item() == 0.0


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\), found 5"):
        cross_entropy(torch.randn(3, 5), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 5\), found -1"):
        cross_entropy(torch.randn(3, 5), torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"inputs \(3, 5\) must be targets \(4,\) plus a vocab dim"):
        cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 2, 3]))


@given(st.integers(1, 6), st.integers(2, 9), st.floats(-100, 100), st.integers(0, 2**31 - 1))
def test_cross_entropy_is_shift_invariant_and_nonnegative(batch, vocab, shift, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g, dtype=torch.float64) * 5
    targets = torch.randint(0, vocab, (batch,), generator=g)
    loss = cross_entropy(logits, targets)
    assert loss.item() >= 0
    assert_close(cross_entropy(logits + shift, targets), loss, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------------------------------
# gradient_clipping


def params_with_grads(shapes, scale=1.0, seed=0, without_grad=()):
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(*shape, generator=g))
        if i not in without_grad:
            p.grad = torch.randn(*shape, generator=g) * scale
        params.append(p)
    return params


@pytest.mark.parametrize("max_norm", [1e-2, 0.5, 1.0, 1e3])
@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])
def test_gradient_clipping_matches_clip_grad_norm(max_norm, scale):
    shapes = [(5, 5), (10,), (3, 4, 2)]
    ours, ref = params_with_grads(shapes, scale), params_with_grads(shapes, scale)
    adapters.run_gradient_clipping(parameters=ours, max_l2_norm=max_norm)
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    for p, r in zip(ours, ref, strict=True):
        assert_close(p.grad, r.grad)


def test_gradient_clipping_skips_parameters_without_grads_and_matches_torch():
    shapes = [(4, 3), (7,), (2, 2)]
    ours = params_with_grads(shapes, 5.0, without_grad=(1,))
    ref = params_with_grads(shapes, 5.0, without_grad=(1,))
    adapters.run_gradient_clipping(parameters=ours, max_l2_norm=1.0)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert ours[1].grad is None
    for p, r in zip(ours, ref, strict=True):
        if r.grad is not None:
            assert_close(p.grad, r.grad)
    total = torch.sqrt(sum(p.grad.square().sum() for p in ours if p.grad is not None))
    # Clipped to 1 up to float32 rounding; eps (1e-6 against a norm of ~20) is below that resolution here, so it is
    # tested with tiny gradients in test_gradient_clipping_adds_eps_to_the_norm_visible_with_tiny_gradients.
    assert abs(total.item() - 1.0) < 1e-5


@pytest.mark.parametrize("max_norm", [1e-7, 1e-6])
def test_gradient_clipping_adds_eps_to_the_norm_visible_with_tiny_gradients(max_norm):
    """Gradients of norm ~3e-6 (where eps=1e-6 is a third of the norm): the scale is exactly
    max_norm / (norm + 1e-6), as torch's clip_grad_norm_, so the clipped norm is clearly below max_norm (a scale
    without eps would give exactly max_norm; a smaller eps, nearly)."""
    shapes = [(4,), (3, 2)]
    ours, ref = params_with_grads(shapes, 1e-6), params_with_grads(shapes, 1e-6)
    before = [p.grad.double().clone() for p in ours]
    norm = torch.sqrt(sum(g.square().sum() for g in before)).item()
    assert norm > max_norm  # it clips
    gradient_clipping(ours, max_l2_norm=max_norm)
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    scale = max_norm / (norm + 1e-6)
    for p, r, g in zip(ours, ref, before, strict=True):
        assert_close(p.grad.double(), g * scale, rtol=1e-5, atol=0)
        assert_close(p.grad, r.grad, rtol=1e-5, atol=0)
    after = torch.sqrt(sum(p.grad.double().square().sum() for p in ours)).item()
    assert after == pytest.approx(max_norm * norm / (norm + 1e-6), rel=1e-5)
    assert after < 0.8 * max_norm


def test_gradient_clipping_returns_the_norm_before_clipping_and_leaves_small_grads_alone():
    params = params_with_grads([(3,), (4,)], 0.01)
    before = [p.grad.clone() for p in params]
    norm = gradient_clipping(params, max_l2_norm=10.0)
    expected = torch.sqrt(sum(g.double().square().sum() for g in before))
    assert_close(norm.double(), expected)
    for p, g in zip(params, before, strict=True):
        assert torch.equal(p.grad, g)


def test_gradient_clipping_accepts_a_generator_and_no_grads():
    model = torch.nn.Linear(3, 2)
    assert gradient_clipping(model.parameters(), 1.0).item() == 0.0
    model(torch.randn(4, 3)).sum().mul(100).backward()
    gradient_clipping(model.parameters(), 1.0)
    assert torch.sqrt(sum(p.grad.square().sum() for p in model.parameters())).item() <= 1.0


def test_gradient_clipping_rejects_non_positive_max_norm():
    with pytest.raises(ValueError, match="max_l2_norm=0 must be > 0"):
        gradient_clipping(params_with_grads([(2,)]), 0)
    with pytest.raises(ValueError, match="max_l2_norm=-1.0 must be > 0"):
        gradient_clipping(params_with_grads([(2,)]), -1.0)


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
    st.integers(0, 2**31 - 1),
)
def test_clipping_never_raises_the_norm_and_caps_it(sizes, grad_scale, max_norm, seed):
    params = params_with_grads([(n,) for n in sizes], grad_scale, seed)
    before = torch.sqrt(sum(p.grad.double().square().sum() for p in params)).item()
    gradient_clipping(params, max_norm)
    after = torch.sqrt(sum(p.grad.double().square().sum() for p in params)).item()
    assert after <= before * (1 + 1e-6)
    assert after <= max_norm * (1 + 1e-5)
    if before <= max_norm:
        assert after == pytest.approx(before, rel=1e-6)
