"""Losses: closed forms, global-batch semantics, and that a few gradient steps decrease each one."""

import math

import pytest
import torch

from adadim_dist.objectives import (
    barlow_twins_loss,
    barlow_twins_loss_sharded,
    covariance_loss,
    nt_xent_loss,
    nt_xent_loss_sharded,
    uniformity,
    variance_loss,
    vicreg_loss,
    vicreg_terms,
    vicreg_terms_sharded,
)

from ..distributed._simulated import run_shards



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
        (lambda: vicreg_terms_sharded(torch.randn(4, 3), torch.randn(4, 3), lambda x: x, 3), "num_global"),
        (lambda: barlow_twins_loss_sharded(torch.randn(1, 3), torch.randn(1, 3), lambda x: x, 1), "num_global"),
        (lambda: nt_xent_loss_sharded(*[torch.randn(4, 3)] * 2, *[torch.randn(8, 3)] * 2, row_offset=5),
         "row_offset"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call()


def _global_views(num_rows=24, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    # An offset mean and unequal scales: the two-pass centring and the per-dimension statistics matter.
    z_a = 3.0 + torch.randn(num_rows, dim, generator=g) * torch.linspace(0.2, 2.0, dim)
    z_b = z_a + 0.3 * torch.randn(num_rows, dim, generator=g)
    return z_a, z_b


@pytest.mark.parametrize("num_shards", [1, 2, 4, 8])
def test_sharded_losses_averaged_over_workers_equal_the_gathered_losses(num_shards):
    """Each worker's share (local rows, all-reduced sums, gathered columns), averaged over workers as DDP
    averages gradients, is the gathered loss. Catches a positive or self-mask at the wrong column (row
    offset), a local instead of global mean or count, a biased/unbiased variance swap."""
    z_a, z_b = _global_views()
    num_global = z_a.shape[0]
    n = num_global // num_shards

    def share(shard, all_reduce):
        rows = slice(shard * n, (shard + 1) * n)
        terms = vicreg_terms_sharded(z_a[rows], z_b[rows], all_reduce, num_global)
        return {
            **terms,
            "barlow_twins": barlow_twins_loss_sharded(z_a[rows], z_b[rows], all_reduce, num_global, 5e-3),
            "nt_xent": nt_xent_loss_sharded(z_a[rows], z_b[rows], z_a, z_b, shard * n, 0.3),
        }

    shares = run_shards(share, num_shards)
    expected = {
        **vicreg_terms(z_a, z_b),
        "barlow_twins": barlow_twins_loss(z_a, z_b, 5e-3),
        "nt_xent": nt_xent_loss(z_a, z_b, 0.3),
    }
    for name, value in expected.items():
        averaged = sum(s[name] for s in shares) / num_shards
        assert averaged.item() == pytest.approx(value.item(), rel=1e-12), name
        if name != "invariance" and name != "nt_xent":  # replicated terms: the same value on every worker
            assert all(s[name].item() == pytest.approx(value.item(), rel=1e-12) for s in shares), name


def test_nt_xent_sharded_gradients_equal_gathered_through_columns_and_rows():
    """On one process (offset 0, columns = rows) the sharded form's gradient equals nt_xent_loss's."""
    z_a, z_b = (t.clone().requires_grad_(True) for t in _global_views())
    sharded = nt_xent_loss_sharded(z_a, z_b, z_a, z_b, 0, 0.2)
    grads_sharded = torch.autograd.grad(sharded, (z_a, z_b))
    grads = torch.autograd.grad(nt_xent_loss(z_a, z_b, 0.2), (z_a, z_b))
    for got, expected in zip(grads_sharded, grads):
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("num_shards", [1, 2, 4])
@pytest.mark.parametrize("dim", [6, 40])
def test_both_sharded_covariance_forms_give_the_gathered_vicreg_and_barlow_twins_terms(num_shards, dim):
    """N = 24 rows: at D = 6 VICReg's covariance and Barlow Twins' cross-correlation come from the summed D×D
    products, at D = 40 from blocks of the row Gram matrices (‖C‖²_F less the diagonal's squares, a few numbers
    to sum). Both equal the gathered terms on every worker; a wrong diagonal correction or scaling would not."""
    from adadim_dist.objectives.losses import (barlow_twins_local_sums, barlow_twins_loss_from_sums,
                                               covariance_from_row_gram, vicreg_local_sums, vicreg_terms_from_sums)

    z_a, z_b = _global_views(dim=dim)
    num_global = z_a.shape[0]
    n = num_global // num_shards
    means = torch.stack([z_a, z_b]).mean(dim=1)

    def share(shard, all_reduce):
        rows = slice(shard * n, (shard + 1) * n)
        sums = all_reduce(vicreg_local_sums(z_a[rows], z_b[rows], means, num_global, z_a, z_b))
        barlow_sums = all_reduce(barlow_twins_local_sums(z_a[rows], z_b[rows], means, z_a, z_b))
        return (sums.numel(), barlow_sums.numel(), vicreg_terms_from_sums(z_a[rows], z_b[rows], sums),
                barlow_twins_loss_from_sums(barlow_sums, dim, num_global, 5e-3))

    row_gram = covariance_from_row_gram(num_global, dim)
    assert row_gram == (dim == 40)
    expected = vicreg_terms(z_a, z_b)
    for numel, barlow_numel, terms, barlow in run_shards(share, num_shards):
        assert numel == 2 * dim + (2 if row_gram else 2 * dim * dim)
        assert barlow_numel == (dim + 1 if row_gram else 2 * dim + dim * dim)
        for name in ("variance", "covariance"):
            assert terms[name].item() == pytest.approx(expected[name].item(), rel=1e-12), name
        assert barlow.item() == pytest.approx(barlow_twins_loss(z_a, z_b, 5e-3).item(), rel=1e-12)
