"""Losses: closed forms, global-batch semantics, and that a few gradient steps decrease each one."""

import math

import pytest
import torch

from adadim_dist.objectives import (
    barlow_twins_loss,
    covariance_loss,
    nt_xent_loss,
    uniformity,
    variance_loss,
    vicreg_loss,
)



@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_closed_form_for_identical_views_of_orthogonal_samples(temperature):
    """Positive similarity 1, all 2N−2 negatives 0 → loss = log(1 + (2N−2)·e^(−1/τ)). Catches a missing
    self-mask (adds e^(1/τ) to the denominator) or negatives taken from one view only."""
    n = 5
    z, _ = torch.linalg.qr(torch.randn(8, n))
    z = z.T
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    assert nt_xent_loss(z, z.clone(), temperature).item() == pytest.approx(expected, rel=1e-10)


def test_variance_and_covariance_closed_forms():
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # std = √2 per dim → no hinge; cov off-diagonal = 2
    assert variance_loss(z, eps=0.0).item() == pytest.approx(0.0)
    assert covariance_loss(z).item() == pytest.approx(2 * 2.0**2 / 2)
    assert variance_loss(torch.zeros(4, 3), eps=0.0).item() == pytest.approx(1.0)


def test_barlow_twins_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-4)


def _fit(loss_fn, steps=30, lr=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_a = torch.randn(64, 16, generator=g)
    x_b = x_a + 0.3 * torch.randn(64, 16, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(net(x_a), net(x_b))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "loss_fn, lr",
    [
        (lambda a, b: vicreg_loss(a, b), 0.01),
        (lambda a, b: barlow_twins_loss(a, b), 0.01),
        (lambda a, b: nt_xent_loss(a, b, 0.2), 0.1),
        (lambda a, b: uniformity(torch.cat([a, b])), 0.1),
    ],
    ids=["vicreg", "barlow_twins", "nt_xent", "uniformity"],
)
def test_loss_decreases_under_gradient_steps(loss_fn, lr):
    torch.manual_seed(0)
    losses = _fit(loss_fn, lr=lr)
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: vicreg_loss(torch.randn(4, 3), torch.randn(5, 3)), "z_a, z_b"),
        (lambda: nt_xent_loss(torch.randn(4), torch.randn(4)), "z_a"),
        (lambda: nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature"),
        (lambda: barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2)), "z_a, z_b"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call()
