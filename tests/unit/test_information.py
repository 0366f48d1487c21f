"""Closed-form checks of the estimators (float64). Each docstring names the bug the check would catch."""

import math

import pytest
import torch

from adadim_dist.objectives import (
    alignment,
    alignment_sharded,
    effective_rank,
    effective_rank_from_gram,
    effective_rank_sharded,
    gram_block,
    gram_matrix,
    information_terms,
    information_terms_sharded,
    joint_entropy,
    matrix_entropy,
    mutual_information,
    renyi2_information_terms,
    renyi_entropy,
    uniformity,
    uniformity_sharded,
)

from adadim_dist.objectives.information import _row_gram_is_cheaper

from ..distributed._simulated import run_shards



def _orthogonal_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed)))
    return 3.0 * q.T  # n mutually orthogonal rows of norm 3 (the norm must not matter)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_effective_rank_equals_k_for_k_equal_singular_values(k):
    """A rank-k matrix with equal singular values has erank k; a wrong log base or missing exp would not."""
    n, d = 16, 10
    u, _ = torch.linalg.qr(torch.randn(n, n))
    v, _ = torch.linalg.qr(torch.randn(d, d))
    z = 2.5 * u[:, :k] @ v[:, :k].T
    assert effective_rank(z).item() == pytest.approx(k, rel=1e-4)


def test_effective_rank_bounds_on_random_input():
    z = torch.randn(32, 8)
    value = effective_rank(z).item()
    assert 1.0 <= value <= 8.0 + 1e-6


@pytest.mark.parametrize("order", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_renyi_entropy_of_orthogonal_rows_is_log_n(order, kernel):
    """N orthogonal rows give A = I/N, whose entropy is log N at every order (cosine kernel); the gaussian
    kernel is not exactly I for orthogonal rows, so it is checked only for cosine."""
    n = 6
    x = _orthogonal_rows(n, 10)
    value = renyi_entropy(x, order=order, kernel=kernel).item()
    if kernel == "cosine":
        assert value == pytest.approx(math.log(n), abs=1e-9)
    else:
        assert 0.0 < value < math.log(n)


@pytest.mark.parametrize("order", [0.5, 1.0, 2.0, 3.0])
def test_renyi_entropy_of_identical_rows_is_zero(order):
    x = torch.randn(1, 5).repeat(9, 1)
    assert renyi_entropy(x, order=order).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_order_two_fast_path_equals_eigenvalue_path(kernel):
    """S₂ via −log‖A‖_F² must equal log(Σλ²)/(1−2) computed from eigenvalues."""
    x = torch.randn(20, 7)
    a = gram_matrix(x, kernel)
    a = a / torch.trace(a)
    eigenvalues = torch.linalg.eigvalsh(a).clamp_min(0)
    via_eigen = -torch.log((eigenvalues**2).sum())
    assert matrix_entropy(a, 2.0).item() == pytest.approx(via_eigen.item(), abs=1e-6)


def test_order_near_one_approaches_von_neumann():
    x = torch.randn(15, 6)
    von_neumann = renyi_entropy(x, order=1.0).item()
    assert renyi_entropy(x, order=1.0 + 1e-5).item() == pytest.approx(von_neumann, abs=1e-3)
    assert renyi_entropy(x, order=1.0 - 1e-5).item() == pytest.approx(von_neumann, abs=1e-3)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
@pytest.mark.parametrize("seed", range(5))
def test_mutual_information_symmetric_and_bounded(kernel, seed):
    """0 ≤ I(X;Y) ≤ min(H(X), H(Y)) (the Hadamard-product bounds) and I(X;Y) = I(Y;X)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 5, generator=g)
    y = torch.tanh(x @ torch.randn(5, 9, generator=g)) + 0.5 * torch.randn(24, 9, generator=g)
    i_xy = mutual_information(x, y, kernel=kernel).item()
    i_yx = mutual_information(y, x, kernel=kernel).item()
    h_x, h_y = renyi_entropy(x, kernel=kernel).item(), renyi_entropy(y, kernel=kernel).item()
    assert i_xy == pytest.approx(i_yx, abs=1e-12)
    assert -1e-9 <= i_xy <= min(h_x, h_y) + 1e-9
    h_joint = joint_entropy(x, y, kernel=kernel).item()
    assert max(h_x, h_y) - 1e-9 <= h_joint <= h_x + h_y + 1e-9


def test_self_information_equals_entropy_for_orthogonal_rows():
    x = _orthogonal_rows(8, 12)
    assert mutual_information(x, x).item() == pytest.approx(renyi_entropy(x).item(), abs=1e-9)


def test_self_information_is_below_entropy_in_general():
    """For this estimator I(X;X) = 2H(A) − H(A∘A) < H(X) unless A is a scaled projection."""
    x = torch.randn(16, 4)
    assert mutual_information(x, x).item() < renyi_entropy(x).item() - 1e-3


def test_mutual_information_with_a_constant_is_zero():
    x = torch.randn(10, 4)
    constant = torch.ones(10, 3)
    assert mutual_information(x, constant).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("order", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_degenerate_inputs_give_finite_values_and_gradients(order, kernel):
    """All-zero or duplicated rows must never produce NaN/Inf (0/0 in normalisation or log 0)."""
    cases = [torch.zeros(8, 4), torch.randn(1, 4).repeat(8, 1), torch.cat([torch.zeros(4, 4), torch.randn(4, 4)])]
    for x in cases:
        x = x.clone().requires_grad_(True)
        values = [
            renyi_entropy(x, order=order, kernel=kernel),
            mutual_information(x, x * 2, order=order, kernel=kernel),
            effective_rank(x.detach()),
            uniformity(x),
        ]
        assert all(torch.isfinite(v) for v in values)
        if order == 2.0:
            renyi_entropy(x, kernel=kernel).backward()
            assert torch.isfinite(x.grad).all()


def test_uniformity_closed_form_for_antipodal_points():
    """Two antipodal unit vectors are at squared distance 4: uniformity = −2·4 = −8."""
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(z).item() == pytest.approx(-8.0)
    assert uniformity(torch.ones(5, 3)).item() == pytest.approx(0.0)


def test_alignment_of_identical_and_opposite_views():
    z = torch.randn(6, 4)
    assert alignment(z, z).item() == pytest.approx(0.0)
    assert alignment(z, -z).item() == pytest.approx(4.0)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: effective_rank(torch.randn(4)), "z"),
        (lambda: renyi_entropy(torch.randn(4, 3), order=0), "order"),
        (lambda: renyi_entropy(torch.randn(4, 3), order=-1.0), "order"),
        (lambda: renyi_entropy(torch.randn(4, 3), kernel="laplace"), "kernel"),
        (lambda: mutual_information(torch.randn(4, 3), torch.randn(5, 3)), "x, y"),
        (lambda: joint_entropy(torch.randn(4, 3, 2), torch.randn(4, 3)), "x"),
        (lambda: alignment(torch.randn(4, 3), torch.randn(4, 2)), "z_a, z_b"),
        (lambda: gram_block(torch.randn(4, 3), torch.randn(8, 3), kernel="gaussian"), "sigma"),
        (lambda: information_terms_sharded([(*[torch.randn(4, 3)] * 2, *[torch.randn(8, 3)] * 2)], row_offset=6,
                                           all_reduce=lambda x: x), "row_offset"),
        (lambda: uniformity_sharded(torch.randn(4, 3), torch.randn(8, 3), -1, lambda x: x), "row_offset"),
        (lambda: renyi2_information_terms(torch.ones(5)), "sums"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call()


@pytest.mark.parametrize("estimate", [
    lambda z: effective_rank(z),
    lambda z: renyi_entropy(z, order=3.0),
    lambda z: renyi_entropy(z, order=1.0),
])
def test_diverged_input_gives_nan_not_an_exception(estimate):
    """The SVD / eigensolver raise on NaN input; a diverged step must instead surface as a non-finite value
    (the worker then stops or skips it with a message naming the term), with the gradient path intact."""
    z = torch.randn(8, 4, dtype=torch.float64)
    z[2, 1] = float("inf")
    z.requires_grad_(True)
    value = estimate(z)
    assert value.dim() == 0 and math.isnan(value.item())
    value.backward()
    assert z.grad is not None and not torch.isfinite(z.grad).all()


@pytest.mark.parametrize("k, num_rows, dim", [(1, 16, 10), (3, 16, 10), (7, 16, 10), (3, 6, 10), (6, 6, 10)])
def test_effective_rank_from_either_gram_matrix_equals_k_for_k_equal_singular_values(k, num_rows, dim):
    """From ZᵀZ or ZZᵀ alone: erank k for k equal singular values, also with fewer rows than features, where only
    the top min(N, d) eigenvalues are singular values. Keeping them all would add |N − d| noise terms; taking
    square roots of rounding noise in the null directions would add spurious singular values."""
    u, _ = torch.linalg.qr(torch.randn(num_rows, num_rows))
    v, _ = torch.linalg.qr(torch.randn(dim, dim))
    z = 2.5 * u[:, :k] @ v[:, :k].T
    for gram in (z.T @ z, z @ z.T):
        value = effective_rank_from_gram(gram, tuple(z.shape)).item()
        assert value == pytest.approx(k, rel=1e-4)
        assert value == pytest.approx(effective_rank(z).item(), rel=1e-9)


def test_gram_block_of_a_matrix_with_itself_is_its_gram_matrix():
    x = torch.randn(9, 4)
    assert torch.allclose(gram_block(x, x), gram_matrix(x), rtol=0, atol=1e-15)
    assert torch.allclose(gram_block(x, x, "gaussian", 0.6), gram_matrix(x, "gaussian", 0.6), rtol=0, atol=1e-15)
    assert torch.allclose(gram_block(x[3:5], x, "gaussian", 0.6), gram_matrix(x, "gaussian", 0.6)[3:5], atol=1e-15)


@pytest.mark.parametrize("num_shards", [1, 2, 4, 8])
@pytest.mark.parametrize("dim_z", [6, 40])
@pytest.mark.parametrize("kernel, sigma", [("cosine", None), ("gaussian", 0.8)])
def test_sharded_estimators_equal_the_gathered_ones_on_every_worker(num_shards, dim_z, kernel, sigma):
    """Order-2 H(R), H(Z), H(R,Z), I(R;Z) from row blocks, erank (from all-reduced ZᵀZ for d = 6, from the
    gathered ZZᵀ for d = 40), uniformity and alignment from all-reduced sums: the gathered value on every
    worker. Catches a diagonal read at the wrong column (row offset), a trace or norm of the local block only,
    the wrong eigenvalue count."""
    g = torch.Generator().manual_seed(num_shards + dim_z)
    r = torch.randn(24, 10, generator=g)
    z = torch.tanh(r @ torch.randn(10, dim_z, generator=g)) + 0.3 * torch.randn(24, dim_z, generator=g)
    z_b = z + 0.2 * torch.randn(z.shape, generator=g)
    num_global = r.shape[0]
    n = num_global // num_shards
    assert _row_gram_is_cheaper(num_global, n, dim_z) == (dim_z == 40)  # both routes of erank are covered

    def worker(shard, all_reduce):
        rows = slice(shard * n, (shard + 1) * n)
        return {
            **information_terms_sharded([(r[rows], z[rows], r, z)], shard * n, all_reduce, kernel, sigma)[0],
            "erank": effective_rank_sharded(z[rows], z, all_reduce),
            "uniformity": uniformity_sharded(z[rows], z, shard * n, all_reduce),
            "alignment": alignment_sharded(z[rows], z_b[rows], all_reduce, num_global),
        }

    expected = {
        **information_terms(r, z, 2.0, kernel, sigma),
        "erank": effective_rank(z),
        "uniformity": uniformity(z),
        "alignment": alignment(z, z_b),
    }
    for result in run_shards(worker, num_shards):
        for name, value in expected.items():
            assert result[name].item() == pytest.approx(value.item(), rel=1e-9), name
