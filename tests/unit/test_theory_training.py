"""The linear theory against SGD training on synthetic Gaussian views (``adadim_dist.theory.synthetic``).

The theory's own losses must land on ``predict_stationary_solution``: same collapsed directions, same
per-direction strengths ``||W e_i||`` up to SGD's finite-sample error. The project's objectives have no closed
form here; the tests pin what ``benchmarks/theory_phase_diagram.py`` measured and RESULTS.md reports: strong
augmentation collapses the augmented directions (like the alignment + variance landscape, unlike spectral
contrastive), and weight decay above the theory's complete-collapse point collapses nothing.
"""

import numpy as np
import pytest

from adadim_dist.theory import (
    alignment_variance_landscape,
    predict_stationary_solution,
    spectral_contrastive_landscape,
    spectral_contrastive_sample_loss,
)
from adadim_dist.theory.synthetic import (
    LEARNING_RATES,
    GaussianViews,
    alignment_variance_sample_loss,
    collapsed_directions,
    predicted_strengths,
    project_objective,
    train_linear_encoder,
)

STEPS = 300
AUGMENTED = [False] * 4 + [True] * 4  # coordinates 4-7 get the augmentation noise


def _views(augmentation_variance: float) -> GaussianViews:
    return GaussianViews((1.0,) * 8, tuple(augmentation_variance if a else 0.0 for a in AUGMENTED))


@pytest.mark.parametrize(
    "landscape, sample_loss, b, gamma, surviving",
    [
        # spectral contrastive: P = 2A, augmentation only shrinks a direction (to 1 / (1 + b) of the clean ones)
        (spectral_contrastive_landscape, spectral_contrastive_sample_loss, 3.0, 0.0, 8),
        (spectral_contrastive_landscape, spectral_contrastive_sample_loss, 1.0, 1.5, 8),
        (spectral_contrastive_landscape, spectral_contrastive_sample_loss, 0.0, 2.5, 0),  # gamma > 2a: complete
        # alignment + variance: P = 2A - B, an augmented direction collapses iff b >= 2a - gamma
        (alignment_variance_landscape, alignment_variance_sample_loss, 1.0, 0.0, 8),
        (alignment_variance_landscape, alignment_variance_sample_loss, 1.0, 1.5, 4),
        (alignment_variance_landscape, alignment_variance_sample_loss, 3.0, 0.5, 4),
    ],
)
def test_the_theory_s_losses_train_to_the_predicted_minimum(landscape, sample_loss, b, gamma, surviving):
    views = _views(b)
    expected = predicted_strengths(predict_stationary_solution(
        landscape(views.data_covariance, views.augmentation_covariance, gamma)))
    trained = train_linear_encoder(sample_loss, views, gamma, steps=STEPS, lr=0.05)
    assert int((~collapsed_directions(expected)).sum()) == surviving  # the hand-derived condition
    assert trained.collapsed.tolist() == collapsed_directions(expected).tolist()
    np.testing.assert_allclose(trained.strengths, expected, atol=0.06)


@pytest.mark.parametrize("objective", ["vicreg", "ntxent", "adadim"])
def test_project_objectives_collapse_strongly_augmented_directions_only(objective):
    lr = LEARNING_RATES[objective]
    clean = train_linear_encoder(project_objective(objective, STEPS), _views(0.0), 0.0, steps=STEPS, lr=lr)
    assert clean.rank == 8
    strong = train_linear_encoder(project_objective(objective, STEPS), _views(3.0), 0.0, steps=STEPS, lr=lr)
    assert strong.collapsed.tolist() == AUGMENTED


@pytest.mark.parametrize("objective", ["vicreg", "ntxent", "adadim"])
def test_project_objectives_do_not_collapse_completely_under_weight_decay(objective):
    """gamma = 2.5 > 2 a collapses both solvable losses completely; VICReg's hinge on the standard deviation
    and NT-Xent's normalisation make W = 0 no minimum, so every direction survives (only the scale shrinks)."""
    trained = train_linear_encoder(project_objective(objective, STEPS), _views(0.0), 2.5, steps=STEPS,
                                   lr=LEARNING_RATES[objective])
    assert trained.rank == 8 and trained.strengths.max() < 1.0
