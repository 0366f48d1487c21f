"""Closed-form theory for self-supervised learning (pure numpy/torch; no Ray, FFCV or MLflow).

``linear_ssl``: loss landscape, collapse conditions and global minima of linear-model SSL objectives, the
setting of Ziyin, Lubana, Ueda & Tanaka, "What shapes the loss landscape of self-supervised learning?"
(ICLR 2023, arXiv:2210.00638). See that module's docstring for what is derived here and what is taken from
the paper.

``synthetic`` (torch): the same linear model trained by SGD on Gaussian views, with the theory's losses or
the project's objectives, to check the predictions (``benchmarks/theory_phase_diagram.py``).
"""

from .linear_ssl import (
    LinearSSLPrediction,
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

__all__ = [
    "LinearSSLPrediction",
    "QuarticLandscape",
    "additive_augmentation_view_covariances",
    "alignment_variance_landscape",
    "critical_weight_decay",
    "landscape_loss",
    "origin_is_local_minimum",
    "predict_stationary_solution",
    "spectral_contrastive_landscape",
    "spectral_contrastive_sample_loss",
]
