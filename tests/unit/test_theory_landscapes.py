"""Issue 31's closed forms (``adadim_dist.theory``) against hand numbers, Monte Carlo and the numerical landscape.

Unnormalised InfoNCE (= ½ × the spectral landscape), the data mean and the bias, class imbalance, the shape of a
transition, and the normalised (cosine) NT-Xent. Each Monte Carlo check also shows it could fail: the nearest
wrong formula lies many standard errors away. Training checks are in ``test_theory_trained_predictions.py``.
"""

import numpy as np
import pytest
import torch

from adadim_dist.objectives.losses import nt_xent_loss
from adadim_dist.theory import (
    alignment_variance_landscape,
    biased_landscape,
    class_collapse_weight_decays,
    critical_weight_decay,
    infonce_landscape,
    landscape_loss,
    long_tail_class_priors,
    predict_stationary_solution,
    predict_with_bias,
    singular_value_near_threshold,
    spectral_contrastive_landscape,
    spectral_contrastive_sample_loss,
    surviving_class_directions,
    uncentred_view_covariances,
    unnormalised_infonce_loss,
    unnormalised_infonce_sample_loss,
)
from adadim_dist.theory.normalised import (
    collapse_curvature,
    collapse_threshold,
    high_temperature_collapse_threshold,
    landau_coefficients,
    landau_onset_ratio,
    optimal_block_ratio,
)

torch.set_num_threads(1)


def _rotated_setting():
    q, r = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    rotation = q * np.sign(np.diag(r))
    return rotation @ np.diag([2.0, 1.0, 0.5]) @ rotation.T, np.diag([0.2, 0.6, 1.0])


def _monte_carlo(loss, weight, data_cov, noise_cov, mean=None, bias=None, batches=8, n=1500, seed=0):
    """Mean and standard error of ``loss(f1, f2)`` over Gaussian view batches, f = W x + bias."""
    rng = np.random.default_rng(seed)
    data_chol, noise_chol = np.linalg.cholesky(data_cov), np.linalg.cholesky(noise_cov)
    offset = 0.0 if bias is None else bias
    values = []
    for _ in range(batches):
        x = rng.standard_normal((n, 3)) @ data_chol.T + (0.0 if mean is None else mean)
        views = [x + rng.standard_normal(x.shape) @ noise_chol.T for _ in "ab"]
        f1, f2 = (torch.from_numpy(v @ weight.T + offset) for v in views)
        values.append(float(loss(f1, f2)))
    return np.mean(values), np.std(values, ddof=1) / np.sqrt(batches)


# ------------------------------------------------------------------------------------------------ InfoNCE
def test_infonce_landscape_is_half_the_spectral_one_and_temperature_rescales_w():
    data_cov, noise_cov = _rotated_setting()
    weight = np.random.default_rng(1).standard_normal((2, 3))
    half = 0.5 * landscape_loss(weight, spectral_contrastive_landscape(data_cov, noise_cov))
    assert landscape_loss(weight, infonce_landscape(data_cov, noise_cov)) == pytest.approx(half, rel=1e-12)
    # tau only rescales W: L_tau(W) = L_1(W / sqrt(tau)); hence survives iff s_i / tau > gamma.
    assert landscape_loss(weight, infonce_landscape(data_cov, noise_cov, temperature=0.3)) == pytest.approx(
        landscape_loss(weight / np.sqrt(0.3), infonce_landscape(data_cov, noise_cov)), rel=1e-12)
    assert critical_weight_decay(infonce_landscape(np.diag([3.0, 1.0]), np.eye(2), temperature=0.5)) == 6.0
    # The closed form with mean and bias reduces to the landscape for zero-mean data.
    assert unnormalised_infonce_loss(weight, data_cov, noise_cov) == pytest.approx(half, rel=1e-12)


@pytest.mark.parametrize("include_positive", [False, True])
def test_sample_infonce_averages_to_half_the_spectral_landscape(include_positive):
    """Gaussian views: the expectation is exact (no O(W^8) remainder), up to the O(1/n) Jensen and positive terms."""
    data_cov, noise_cov = _rotated_setting()
    weight = 0.4 * np.random.default_rng(1).standard_normal((2, 3))
    mean, error = _monte_carlo(lambda a, b: unnormalised_infonce_sample_loss(a, b, include_positive=include_positive),
                               weight, data_cov, noise_cov)
    expected = landscape_loss(weight, infonce_landscape(data_cov, noise_cov))
    assert abs(mean - expected) < 4 * error + 2e-3
    # Power: the spectral landscape itself (no ½) is far away.
    assert abs(mean - 2 * expected) > 20 * error


def test_infonce_with_data_mean_and_bias_matches_closed_form_not_the_spectral_one():
    data_cov, noise_cov = _rotated_setting()
    weight = 0.4 * np.random.default_rng(1).standard_normal((2, 3))
    mu, bias = np.array([1.0, -0.5, 0.3]), np.array([0.2, -0.4])
    for b in (None, bias):
        mean, error = _monte_carlo(lambda x, y: unnormalised_infonce_sample_loss(x, y, include_positive=False),
                                   weight, data_cov, noise_cov, mean=mu, bias=b)
        expected = unnormalised_infonce_loss(weight, data_cov, noise_cov, data_mean=mu, bias=b)
        assert abs(mean - expected) < 4 * error + 2e-3
        # Power: ½ × the spectral loss of the same encoder on the same non-zero-mean views is far away.
        m = weight @ mu + (0.0 if b is None else b)
        extended = np.hstack([weight, m[:, None]])
        half_spectral = 0.5 * landscape_loss(extended, biased_landscape("spectral", data_cov, noise_cov))
        assert abs(mean - half_spectral) > 20 * error


# ------------------------------------------------------------------------------------------- mean and bias
def test_spectral_loss_with_bias_is_the_extended_landscape():
    data_cov, noise_cov = _rotated_setting()
    weight = 0.25 * np.random.default_rng(2).standard_normal((2, 3))
    mu, bias = np.array([1.0, -0.5, 0.3]), np.array([0.2, -0.4])
    mean, error = _monte_carlo(spectral_contrastive_sample_loss, weight, data_cov, noise_cov, mean=mu, bias=bias,
                               batches=16)
    extended = np.hstack([weight, (weight @ mu + bias)[:, None]])
    assert abs(mean - landscape_loss(extended, biased_landscape("spectral", data_cov, noise_cov))) < 4 * error + 1e-3
    # Without a bias, the uncentred moments (a larger mean, so that the centred landscape is clearly wrong).
    mu = 2 * mu
    cross, single = uncentred_view_covariances(mu, data_cov, noise_cov)
    no_bias, error = _monte_carlo(spectral_contrastive_sample_loss, weight, data_cov, noise_cov, mean=mu, batches=16)
    expected = landscape_loss(weight, spectral_contrastive_landscape(None, cross_view_covariance=cross,
                                                                       view_covariance=single))
    assert abs(no_bias - expected) < 4 * error + 1e-3
    assert abs(no_bias - landscape_loss(weight, spectral_contrastive_landscape(data_cov, noise_cov))) > 20 * error


def test_bias_takes_an_output_and_collapses_the_weakest_direction():
    """a = 1, b = (0, 0.5, 1, 3), gamma = 0.2: data rates 1.8 / (1 + b) = 1.8, 1.2, 0.9, 0.45 < 2, the constant's."""
    data_cov, noise_cov, mu = np.eye(4), np.diag([0.0, 0.5, 1.0, 3.0]), np.array([2.0, -1.0, 0.0, 1.0])
    without = predict_stationary_solution(spectral_contrastive_landscape(data_cov, noise_cov, 0.2))
    assert without.rank == 4
    for loss in ("spectral", "alignment_variance"):
        predicted = predict_with_bias(loss, mu, data_cov, noise_cov, weight_decay=0.2)
        assert predicted.keeps_constant
        assert np.linalg.norm(predicted.representation_mean) == pytest.approx(1.0)  # ||m||^2 = 2 / 2
        np.testing.assert_allclose(predicted.bias, predicted.representation_mean - predicted.weight @ mu)
    spectral = predict_with_bias("spectral", mu, data_cov, noise_cov, weight_decay=0.2)
    assert spectral.data_directions_kept == 3
    np.testing.assert_allclose(np.linalg.norm(spectral.weight, axis=0), [0.9**0.5, 0.9**0.5 / 1.5, 0.9**0.5 / 2, 0],
                               atol=1e-12)
    # With a spare output (k = d + 1) nothing is lost; a bias decayed so that its rate 2 - bias_decay falls below
    # the weakest data rate (0.45) gives its slot back, and at 2 - 1.5 = 0.5 > 0.45 it does not yet.
    assert predict_with_bias("spectral", mu, data_cov, noise_cov, 0.2, output_dim=5).data_directions_kept == 4
    assert predict_with_bias("spectral", mu, data_cov, noise_cov, 0.2, bias_decay=1.5).data_directions_kept == 3
    decayed = predict_with_bias("spectral", mu, data_cov, noise_cov, 0.2, bias_decay=1.6)
    assert decayed.data_directions_kept == 4 and decayed.keeps_constant is False


def test_data_mean_raises_the_complete_collapse_weight_decay():
    data_cov, noise_cov, mu = np.eye(4), np.zeros((4, 4)), np.array([2.0, -1.0, 0.0, 1.0])
    cross, single = uncentred_view_covariances(mu, data_cov, noise_cov)
    landscape = spectral_contrastive_landscape(None, cross_view_covariance=cross, view_covariance=single,
                                               weight_decay=2.5)
    assert critical_weight_decay(landscape) == pytest.approx(2 * (1 + 6))  # 2 lambda_max(I + mu mu^T)
    prediction = predict_stationary_solution(landscape)
    assert prediction.rank == 1  # zero-mean data would collapse completely at gamma = 2.5 > 2
    np.testing.assert_allclose(np.abs(prediction.input_directions[:, 0]), np.abs(mu) / np.linalg.norm(mu), atol=1e-9)


# ---------------------------------------------------------------------------------------------- imbalance
def test_long_tail_priors_follow_the_data_module_profile():
    priors = long_tail_class_priors(10, 10.0)
    counts = np.array([int(6000 * 10.0 ** (-c / 9)) for c in range(10)])  # adadim_dist.data.sources.long_tailed
    np.testing.assert_allclose(priors, counts / counts.sum(), atol=2e-4)
    assert priors[0] / priors[-1] == pytest.approx(10.0)


def test_tail_classes_collapse_first_at_the_stated_weight_decays():
    priors = long_tail_class_priors(10, 10.0)
    np.testing.assert_allclose(class_collapse_weight_decays(priors), 2 * priors, rtol=1e-12)
    np.testing.assert_allclose(class_collapse_weight_decays(priors, 0.1, loss="infonce", temperature=0.5),
                               priors / 0.5, rtol=1e-12)
    np.testing.assert_allclose(class_collapse_weight_decays(priors, 0.1, 0.02, loss="alignment_variance"),
                               2 * (priors + 0.02) - 0.1, rtol=1e-12)
    surviving = {gamma: surviving_class_directions(priors, gamma) for gamma in (0.05, 0.1, 0.15, 0.2, 0.3)}
    assert [int(kept.sum()) for kept in surviving.values()] == [9, 7, 5, 4, 2]
    for kept in surviving.values():  # always the most frequent classes: a prefix of the class order
        assert kept.tolist() == sorted(kept.tolist(), reverse=True)
    # Independent of the augmentation for the spectral loss; a rank limit also drops the tail first.
    assert surviving_class_directions(priors, 0.1, augmentation_variance=2.0).sum() == 7
    assert surviving_class_directions(priors, 0.0, output_dim=3).tolist() == [True] * 3 + [False] * 7


# ------------------------------------------------------------------------------------- near the threshold
def test_singular_value_has_square_root_onset_at_the_threshold():
    a, b = 1.0, 0.5
    gammas = 2 * a - np.logspace(-4, -1, 7)  # approach gamma = 2a from below
    predicted = [np.sqrt(predict_stationary_solution(spectral_contrastive_landscape(
        np.diag([a]), np.diag([b]), g)).squared_singular_values[0]) for g in gammas]
    np.testing.assert_allclose(singular_value_near_threshold(2 * a, a + b, gammas), predicted, rtol=1e-9)
    slope = np.polyfit(np.log(2 * a - gammas), np.log(predicted), 1)[0]
    assert slope == pytest.approx(0.5, abs=1e-6)
    assert singular_value_near_threshold(2 * a, a + b, 2 * a + 0.1) == 0.0
    # Alignment + variance, control parameter b (threshold b* = 2a): still exponent ½.
    bs = 2.0 - np.logspace(-4, -1, 7)
    values = [np.sqrt(predict_stationary_solution(alignment_variance_landscape(
        np.diag([1.0]), np.diag([b]))).squared_singular_values[0]) for b in bs]
    assert np.polyfit(np.log(2.0 - bs), np.log(values), 1)[0] == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------- normalised case
def test_ntxent_is_scale_invariant_so_weight_decay_only_shrinks_the_norm():
    generator = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(64, 5, generator=generator, dtype=torch.float64) for _ in "ab")
    weight = torch.randn(5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = nt_xent_loss(x1 @ weight.T, x2 @ weight.T, 0.2)
    (gradient,) = torch.autograd.grad(loss, weight)
    assert nt_xent_loss(x1 @ (3 * weight).T, x2 @ (3 * weight).T, 0.2).item() == pytest.approx(loss.item())
    assert abs((gradient * weight.detach()).sum().item()) < 1e-10 * (gradient.norm() * weight.detach().norm()).item()


def test_high_temperature_threshold_matches_the_numerical_landscape():
    """b* = a / (k1 tau - 1) from the expansion, against the project's NT-Xent at batch 256 (0.140 at tau 2)."""
    assert high_temperature_collapse_threshold(2.0) == pytest.approx(1 / 7)
    assert high_temperature_collapse_threshold(0.2) == float("inf")
    numerical = collapse_threshold(high=1.0, tolerance=4e-3, temperature=2.0, batches=16)
    assert numerical == pytest.approx(1 / 7, rel=0.1)


def test_project_temperature_collapses_augmented_block_between_b_2_and_3():
    """At tau = 0.2 the expansion gives no threshold; the numerical landscape does (b* = 2.40 at 32 batches)."""
    assert collapse_curvature(2.0, batches=16) < 0 < collapse_curvature(3.0, batches=16)


def test_normalised_onset_is_a_square_root_from_the_zero_of_the_landau_coefficient():
    """tau 0.2, 16 batches. The r^2 coefficient A is linear in b; b* is its zero; below b* the optimal ratio
    approaches sqrt(A' (b* - b) / 2B): local exponent 1/2 close to b*, larger farther away (the u^3 term), as the
    Landau expansion says. A two-point curvature (L(eps) - L(0)) / eps^2 = A + B eps^2 would put b* higher by
    B eps^2 / A' (0.016 at eps = 0.01), and exponents read from it come out near 0.6-0.75."""
    estimate = {"batches": 16}
    bs = np.array([2.36, 2.38, 2.40, 2.42])
    a = np.array([landau_coefficients(b, **estimate)[0] for b in bs])
    slope, intercept = np.polyfit(bs, a, 1)
    np.testing.assert_allclose(a, slope * bs + intercept, atol=2e-3 * abs(slope))  # linear in b
    b_star = collapse_threshold(low=2.3, high=2.5, tolerance=1e-4, **estimate)
    assert b_star == pytest.approx(-intercept / slope, abs=5e-4)
    _, quartic, _ = landau_coefficients(b_star, **estimate)
    amplitude = np.sqrt(slope / (2 * quartic))
    gaps = np.array([0.05, 0.025, 0.0125])
    optimum = np.array([optimal_block_ratio(b_star - gap, **estimate) for gap in gaps])
    exponents = np.diff(np.log(optimum)) / np.diff(np.log(gaps))
    assert 0.5 <= exponents[-1] < 0.55 and exponents[0] > exponents[-1]  # measured 0.54, 0.52 (32 batches)
    assert optimum[-1] / np.sqrt(gaps[-1]) == pytest.approx(amplitude, rel=0.03)
    assert landau_onset_ratio(b_star - gaps[-1], **estimate) == pytest.approx(optimum[-1], rel=0.03)
    assert landau_onset_ratio(b_star + 0.02, **estimate) == 0.0
