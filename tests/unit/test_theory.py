"""Closed forms of ``adadim_dist.theory.linear_ssl`` against hand computations, Monte Carlo and optimisation.

Hand-made diagonal covariances give expected numbers written out in the tests (not recomputed with the
module's formulas); one Monte Carlo test checks that the quartic landscape is the expectation of the sample
spectral contrastive loss; L-BFGS on the landscape checks that the predicted global minimum is what
optimisation reaches, including for rotated (non-diagonal) covariances and a rank-limited encoder.
"""

import numpy as np
import pytest
import torch

from adadim_dist.theory import (
    QuarticLandscape,
    additive_augmentation_view_covariances,
    alignment_variance_landscape,
    critical_weight_decay,
    landscape_loss,
    origin_is_local_minimum,
    predict_stationary_solution,
    spectral_contrastive_landscape,
    spectral_contrastive_sample_loss,
)


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _minimise(landscape: QuarticLandscape, output_dim: int, seed: int = 0) -> np.ndarray:
    """Minimise the landscape over a (output_dim, d) weight with L-BFGS from a random start."""
    generator = torch.Generator().manual_seed(seed)
    weight = (0.5 * torch.randn(output_dim, landscape.dim, generator=generator, dtype=torch.float64)).requires_grad_()
    optimiser = torch.optim.LBFGS(
        [weight], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = landscape_loss(weight, landscape)
        loss.backward()
        return loss

    for _ in range(20):
        optimiser.step(closure)
        if weight.grad is not None and weight.grad.abs().max() < 1e-10:
            break
    return weight.detach().numpy()


def test_additive_augmentation_gives_shared_and_single_view_covariances():
    data = np.array([[2.0, 0.5], [0.5, 1.0]])
    noise = np.diag([0.3, 0.7])
    cross_view, single_view = additive_augmentation_view_covariances(data, noise)
    np.testing.assert_allclose(cross_view, data)
    np.testing.assert_allclose(single_view, [[2.3, 0.5], [0.5, 1.7]])


def test_spectral_contrastive_landscape_is_expected_sample_loss():
    """Monte Carlo: mean sample loss over augmented views equals the closed-form landscape (P = 2A, Q = A + B)."""
    rng = np.random.default_rng(0)
    rotation = _random_rotation(3, seed=1)
    data_cov = rotation @ np.diag([2.0, 1.0, 0.5]) @ rotation.T
    noise_cov = np.diag([0.2, 0.6, 1.0])
    weight = rng.standard_normal((2, 3)) * 0.5
    landscape = spectral_contrastive_landscape(data_cov, noise_cov)

    data_chol, noise_chol = np.linalg.cholesky(data_cov), np.linalg.cholesky(noise_cov)
    estimates = []
    for _ in range(8):
        x = rng.standard_normal((1500, 3)) @ data_chol.T
        view1 = x + rng.standard_normal(x.shape) @ noise_chol.T
        view2 = x + rng.standard_normal(x.shape) @ noise_chol.T
        w = torch.from_numpy(weight)
        estimates.append(float(spectral_contrastive_sample_loss(torch.from_numpy(view1) @ w.T, torch.from_numpy(view2) @ w.T)))
    expected = landscape_loss(weight, landscape)
    standard_error = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - expected) < 5 * standard_error + 1e-3
    # The check has power: putting the augmentation into the growth term instead gives a different value.
    wrong = QuarticLandscape(growth=2 * (data_cov + noise_cov), saturation=data_cov + noise_cov)
    assert abs(np.mean(estimates) - landscape_loss(weight, wrong)) > 10 * standard_error


def test_spectral_contrastive_diagonal_closed_form():
    """A = diag(3, 2, 1, 0.5), B = diag(1, 0.5, 4, 0.2), gamma = 1.5: P = (6, 4, 2, 1), Q = (4, 2.5, 5, 0.7)."""
    landscape = spectral_contrastive_landscape(np.diag([3.0, 2.0, 1.0, 0.5]), np.diag([1.0, 0.5, 4.0, 0.2]), 1.5)
    prediction = predict_stationary_solution(landscape)

    # Direction 4 has 2 a = 1 <= gamma: collapsed. The others keep (p - gamma) / (2 q^2) on the diagonal of W^T W.
    np.testing.assert_allclose(np.diag(prediction.gram_matrix), [4.5 / 32, 2.5 / 12.5, 0.5 / 50, 0.0], atol=1e-12)
    np.testing.assert_allclose(prediction.gram_matrix, np.diag(np.diag(prediction.gram_matrix)), atol=1e-12)
    assert prediction.rank == 3
    assert prediction.critical_weight_decay == pytest.approx(6.0)
    # Representation variances (p - gamma) / (2 q), and they are what the weight actually produces on C.
    np.testing.assert_allclose(prediction.representation_variances, [0.5625, 0.5, 0.05, 0.0], atol=1e-12)
    view_cov = np.diag([4.0, 2.5, 5.0, 0.7])
    produced = np.sort(np.linalg.eigvalsh(prediction.weight @ view_cov @ prediction.weight.T))[::-1]
    np.testing.assert_allclose(produced, prediction.representation_variances, atol=1e-12)
    assert landscape_loss(prediction.weight, landscape) == pytest.approx(prediction.minimum_loss)
    assert prediction.minimum_loss == pytest.approx(-(0.5625**2 + 0.5**2 + 0.05**2))


def test_strong_augmentation_collapses_direction_in_alignment_variance_loss():
    """P = 2A - B: with A = 2 I, a direction collapses iff its augmentation variance b >= 4 - gamma."""
    data_cov, noise_cov = 2.0 * np.eye(3), np.diag([1.0, 3.9, 4.1])

    without_decay = predict_stationary_solution(alignment_variance_landscape(data_cov, noise_cov))
    assert (np.diag(without_decay.gram_matrix) > 1e-9).tolist() == [True, True, False]
    # Survivor magnitude (2a - b) / (2 (a + b/2)^2): 3 / 12.5 and 0.1 / 31.205.
    np.testing.assert_allclose(np.diag(without_decay.gram_matrix), [3 / 12.5, 0.1 / 31.205, 0.0], atol=1e-12)

    with_decay = predict_stationary_solution(alignment_variance_landscape(data_cov, noise_cov, weight_decay=0.5))
    assert (np.diag(with_decay.gram_matrix) > 1e-9).tolist() == [True, False, False]
    assert with_decay.rank == 1


def test_spectral_contrastive_keeps_noisy_directions_without_weight_decay():
    """Only weight decay collapses directions here: a / (a + b) representation variance even for b >> a."""
    prediction = predict_stationary_solution(spectral_contrastive_landscape(np.diag([1.0, 1.0]), np.diag([0.0, 9.0])))
    assert prediction.rank == 2
    np.testing.assert_allclose(prediction.representation_variances, [1.0, 0.1], atol=1e-12)


def test_weight_decay_above_critical_value_gives_complete_collapse():
    data_cov, noise_cov = np.diag([3.0, 1.0, 0.5]), np.diag([0.5, 0.5, 0.5])
    assert critical_weight_decay(spectral_contrastive_landscape(data_cov, noise_cov)) == pytest.approx(6.0)

    below = spectral_contrastive_landscape(data_cov, noise_cov, weight_decay=5.9)
    above = spectral_contrastive_landscape(data_cov, noise_cov, weight_decay=6.1)
    assert predict_stationary_solution(below).rank == 1
    assert not origin_is_local_minimum(below)
    collapsed = predict_stationary_solution(above)
    assert collapsed.complete_collapse and np.all(collapsed.weight == 0.0) and collapsed.minimum_loss == 0.0
    assert origin_is_local_minimum(above)

    # Optimisation agrees: from a random start it reaches W = 0 above the threshold, rank 1 just below it.
    assert np.abs(_minimise(above, output_dim=3)).max() < 1e-6
    learned_below = np.linalg.svd(_minimise(below, output_dim=3), compute_uv=False) ** 2
    np.testing.assert_allclose(learned_below, [0.1 / (2 * 3.5**2), 0.0, 0.0], atol=1e-7)


def test_optimisation_reaches_predicted_spectrum_for_rotated_covariances():
    """Non-diagonal A and B (not commuting): L-BFGS minimum has the predicted rank, spectrum and W^T W."""
    rotation_a, rotation_b = _random_rotation(4, seed=2), _random_rotation(4, seed=3)
    data_cov = rotation_a @ np.diag([3.0, 2.0, 1.0, 0.4]) @ rotation_a.T
    noise_cov = rotation_b @ np.diag([2.5, 0.3, 1.0, 0.5]) @ rotation_b.T
    landscape = alignment_variance_landscape(data_cov, noise_cov, weight_decay=0.3)
    prediction = predict_stationary_solution(landscape)
    assert 0 < prediction.rank < 4  # the case is non-trivial: some directions collapse, some survive

    learned = _minimise(landscape, output_dim=4)
    learned_spectrum = np.linalg.svd(learned, compute_uv=False) ** 2
    np.testing.assert_allclose(learned_spectrum, prediction.squared_singular_values, atol=1e-6)
    assert int((learned_spectrum > 1e-6).sum()) == prediction.rank
    np.testing.assert_allclose(learned.T @ learned, prediction.gram_matrix, atol=1e-6)
    assert landscape_loss(learned, landscape) == pytest.approx(prediction.minimum_loss, abs=1e-9)


def test_rank_limited_encoder_keeps_largest_whitened_growth_rates():
    """k = 2 outputs, 3 viable directions: keeps the two largest (p - gamma) / q, not the largest p."""
    # Spectral contrastive, gamma = 0: rates 2a / (a + b) = 6/3.5, 4/5, 2/1.1 -> keep directions 1 and 3.
    landscape = spectral_contrastive_landscape(np.diag([3.0, 2.0, 1.0]), np.diag([0.5, 3.0, 0.1]))
    prediction = predict_stationary_solution(landscape, output_dim=2)
    assert prediction.rank == 2 and prediction.survives.tolist() == [True, True, False]
    np.testing.assert_allclose(np.diag(prediction.gram_matrix), [6 / (2 * 3.5**2), 0.0, 2 / (2 * 1.1**2)], atol=1e-12)

    learned = _minimise(landscape, output_dim=2, seed=1)
    np.testing.assert_allclose(learned.T @ learned, prediction.gram_matrix, atol=1e-6)


def test_predicted_minimum_is_not_beaten_by_perturbations():
    rotation = _random_rotation(3, seed=4)
    landscape = spectral_contrastive_landscape(rotation @ np.diag([2.0, 1.0, 0.3]) @ rotation.T, np.diag([1.0, 0.2, 0.4]), 0.5)
    prediction = predict_stationary_solution(landscape)
    rng = np.random.default_rng(5)
    for _ in range(50):
        perturbed = prediction.weight + 1e-2 * rng.standard_normal(prediction.weight.shape)
        assert landscape_loss(perturbed, landscape) > prediction.minimum_loss


def test_loss_agrees_between_numpy_and_torch_and_rejects_bad_input():
    landscape = spectral_contrastive_landscape(np.diag([1.0, 2.0]), np.diag([0.5, 0.5]), 0.1)
    weight = np.array([[0.3, -0.2], [0.1, 0.4], [0.0, 0.2]])
    value = landscape_loss(weight, landscape)
    assert isinstance(value, float)
    assert float(landscape_loss(torch.from_numpy(weight), landscape)) == pytest.approx(value)
    assert landscape_loss(np.zeros((3, 2)), landscape) == 0.0
    with pytest.raises(ValueError):
        QuarticLandscape(growth=np.eye(2), saturation=np.diag([1.0, 0.0]))
    with pytest.raises(ValueError):
        landscape_loss(np.zeros((2, 3)), landscape)
