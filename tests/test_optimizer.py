"""AdamW against torch.optim.AdamW and a hand-worked example; the cosine learning-rate schedule."""

import copy
import math

import pytest
import torch
from torch.testing import assert_close

from cs336_basics.optimizer import AdamW, get_lr_cosine_schedule

from . import adapters


def make_model(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def train_steps(model, optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g, dtype=next(model.parameters()).dtype)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def test_get_adamw_cls_is_our_optimizer_subclass():
    cls = adapters.get_adamw_cls()
    assert cls is AdamW and issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=1e-3),
        dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
        dict(lr=1e-2, betas=(0.0, 0.5), eps=1e-8, weight_decay=0.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adamw_matches_torch_adamw_over_many_steps(kwargs, dtype):
    ours_model, ref_model = make_model(dtype=dtype), make_model(dtype=dtype)
    train_steps(ours_model, AdamW(ours_model.parameters(), **kwargs), 60)
    train_steps(ref_model, torch.optim.AdamW(ref_model.parameters(), **kwargs), 60)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, r in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p, r, **tol)


def test_adamw_param_groups_match_torch():
    """Per-group lr and weight decay (e.g. no decay on biases), with a group whose params get no grad."""

    def groups(model):
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        frozen = torch.nn.Parameter(torch.ones(3))
        return [
            dict(params=weights, weight_decay=0.2),
            dict(params=biases, weight_decay=0.0, lr=5e-3),
            dict(params=[frozen], lr=1.0),
        ]

    ours_model, ref_model = make_model(), make_model()
    ours = AdamW(groups(ours_model), lr=2e-2, betas=(0.9, 0.99))
    ref = torch.optim.AdamW(groups(ref_model), lr=2e-2, betas=(0.9, 0.99))
    train_steps(ours_model, ours, 40)
    train_steps(ref_model, ref, 40)
    for p, r in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p, r, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.param_groups[2]["params"][0], torch.ones(3))  # no grad: untouched, no decay
    assert ours.param_groups[1]["weight_decay"] == 0.0 and ours.param_groups[1]["lr"] == 5e-3


def test_adamw_state_dict_round_trip_mid_training_matches_uninterrupted_run():
    straight_model = make_model()
    straight = AdamW(straight_model.parameters(), lr=1e-2, weight_decay=0.05)
    train_steps(straight_model, straight, 10, seed=1)
    train_steps(straight_model, straight, 15, seed=2)

    model = make_model()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    train_steps(model, optimizer, 10, seed=1)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    assert saved_opt["state"][0]["step"] == 10

    resumed_model = make_model(seed=99)
    resumed_model.load_state_dict(saved_model)
    resumed = AdamW(resumed_model.parameters(), lr=123.0)  # the loaded state dict restores the hyper-parameters
    resumed.load_state_dict(saved_opt)
    assert resumed.param_groups[0]["lr"] == 1e-2
    train_steps(resumed_model, resumed, 15, seed=2)
    for p, r in zip(resumed_model.parameters(), straight_model.parameters(), strict=True):
        assert torch.equal(p, r)


def test_adamw_state_dict_loads_into_torch_adamw_and_back():
    """Same state names (step, exp_avg, exp_avg_sq) as torch: a state dict moves between the two and keeps working."""
    model_a, model_b = make_model(), make_model()
    ours = AdamW(model_a.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(model_b.parameters(), lr=1e-2)
    train_steps(model_a, ours, 5)
    train_steps(model_b, ref, 5)
    assert set(ours.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    for key in ("exp_avg", "exp_avg_sq"):
        assert_close(ours.state_dict()["state"][0][key], ref.state_dict()["state"][0][key])
    # swap: torch continues from our state, we continue from torch's; both runs stay together
    model_c, model_d = copy.deepcopy(model_a), copy.deepcopy(model_b)
    ref_from_ours = torch.optim.AdamW(model_c.parameters())
    ref_from_ours.load_state_dict(copy.deepcopy(ours.state_dict()))
    ours_from_ref = AdamW(model_d.parameters())
    ours_from_ref.load_state_dict(copy.deepcopy(ref.state_dict()))
    train_steps(model_c, ref_from_ours, 5, seed=3)
    train_steps(model_d, ours_from_ref, 5, seed=3)
    for p, r in zip(model_c.parameters(), model_d.parameters(), strict=True):
        assert_close(p, r, rtol=1e-5, atol=1e-6)
    assert int(ours_from_ref.state[next(model_d.parameters())]["step"]) == 10


def test_adamw_three_steps_by_hand():
    """theta0 = 1, lr 0.1, betas (0.5, 0.5), eps 0, weight_decay 0.1, grads 1, -1, 2:
    t=1: theta = 1 * 0.99 = 0.99; m = 0.5, v = 0.5; m^ = 1, v^ = 1 -> theta = 0.99 - 0.1 = 0.89
    t=2: theta = 0.89 * 0.99 = 0.8811; m = -0.25, v = 0.75; m^ = -1/3, v^ = 1 -> theta = 0.8811 + 0.1/3
    t=3: theta *= 0.99; m = 0.875, v = 2.375; m^ = 0.875/0.875 = 1, v^ = 2.375/0.875 = 19/7
         -> theta = 0.9144333... * 0.99 - 0.1 / sqrt(19/7)
    """
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = AdamW([p], lr=0.1, betas=(0.5, 0.5), eps=0.0, weight_decay=0.1)
    theta2 = 0.8811 + 0.1 / 3
    expected = [0.89, theta2, theta2 * 0.99 - 0.1 / math.sqrt(19 / 7)]
    for grad, want in zip([1.0, -1.0, 2.0], expected, strict=True):
        p.grad = torch.tensor([grad], dtype=torch.float64)
        optimizer.step()
        assert p.item() == pytest.approx(want, rel=1e-12)
    state = optimizer.state[p]
    assert state["step"] == 3
    assert state["exp_avg"].item() == pytest.approx(0.875) and state["exp_avg_sq"].item() == pytest.approx(2.375)


def test_adamw_step_returns_closure_loss_and_skips_params_without_grad():
    p, q = torch.nn.Parameter(torch.tensor([2.0])), torch.nn.Parameter(torch.tensor([5.0]))
    optimizer = AdamW([p, q], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 4.0
    assert p.item() < 2.0 and q.item() == 5.0 and q not in optimizer.state


def test_adamw_rejects_sparse_gradients():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        AdamW([p]).step()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-1e-3), r"Invalid learning rate: lr=-0.001; must be >= 0"),
        (dict(eps=-1e-8), r"Invalid epsilon value: eps=-1e-08; must be >= 0"),
        (dict(betas=(1.0, 0.999)), r"Invalid beta parameter at index 0: 1.0; must be in \[0, 1\)"),
        (dict(betas=(0.9, -0.1)), r"Invalid beta parameter at index 1: -0.1; must be in \[0, 1\)"),
        (dict(betas=(0.9,)), r"Invalid betas=\(0.9,\): must be a pair"),
        (dict(weight_decay=-0.1), r"Invalid weight_decay value: weight_decay=-0.1; must be >= 0"),
    ],
)
def test_adamw_rejects_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_adamw_uses_torch_defaults_except_weight_decay():
    optimizer = AdamW([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


# --------------------------------------------------------------------------------------------------------------------
# the cosine schedule

CS336_EXPECTED = [  # the CS336 reference values for max 1, min 0.1, warmup 7, cycle 21, it = 0 .. 24
    0,
    0.14285714285714285,
    0.2857142857142857,
    0.42857142857142855,
    0.5714285714285714,
    0.7142857142857143,
    0.8571428571428571,
    1.0,
    0.9887175604818206,
    0.9554359905560885,
    0.9018241671106134,
    0.8305704108364301,
    0.7452476826029011,
    0.6501344202803414,
    0.55,
    0.44986557971965857,
    0.3547523173970989,
    0.26942958916356996,
    0.19817583288938662,
    0.14456400944391146,
    0.11128243951817937,
    0.1,
    0.1,
    0.1,
    0.1,
]


def test_cosine_schedule_matches_cs336_reference_values():
    got = [
        adapters.run_get_lr_cosine_schedule(
            it=it, max_learning_rate=1, min_learning_rate=0.1, warmup_iters=7, cosine_cycle_iters=21
        )
        for it in range(25)
    ]
    assert got == pytest.approx(CS336_EXPECTED, rel=1e-12, abs=1e-15)


def test_cosine_schedule_hand_worked_values():
    """max 1, min 0.1, warmup 10, cycle 110: warmup is it/10; halfway through the cosine (it=60) is (1+0.1)/2;
    a quarter of the way (it=35) is 0.1 + 0.45 * (1 + cos(pi/4))."""

    def lr(it):
        return get_lr_cosine_schedule(it, 1.0, 0.1, 10, 110)

    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)
    assert lr(35) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    assert lr(110) == pytest.approx(0.1) and lr(10_000) == 0.1


def test_cosine_schedule_without_warmup_or_cycle():
    assert get_lr_cosine_schedule(0, 2.0, 0.5, 0, 10) == pytest.approx(2.0)
    assert get_lr_cosine_schedule(5, 2.0, 0.5, 0, 10) == pytest.approx(1.25)
    assert get_lr_cosine_schedule(5, 2.0, 0.5, 5, 5) == 2.0  # zero-length cycle: the warmup ends at the max
    assert get_lr_cosine_schedule(6, 2.0, 0.5, 5, 5) == 0.5


def test_cosine_schedule_is_monotone_in_each_phase():
    lrs = [get_lr_cosine_schedule(it, 3e-4, 3e-5, 100, 1000) for it in range(1200)]
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:101], strict=True))
    assert all(a >= b for a, b in zip(lrs[100:1000], lrs[101:1001], strict=True))
    assert max(lrs) == pytest.approx(3e-4) and min(lrs[100:]) == pytest.approx(3e-5)


def test_cosine_schedule_rejects_bad_iters():
    with pytest.raises(ValueError, match="warmup_iters=-1 must be >= 0"):
        get_lr_cosine_schedule(0, 1.0, 0.1, -1, 10)
    with pytest.raises(ValueError, match="cosine_cycle_iters=5 must be >= warmup_iters=10"):
        get_lr_cosine_schedule(0, 1.0, 0.1, 10, 5)
