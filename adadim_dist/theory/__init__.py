"""Closed-form theory for self-supervised learning (pure numpy/torch; no Ray, FFCV or MLflow).

``linear_ssl``: loss landscape, collapse conditions and global minima of linear-model SSL objectives, the
setting of Ziyin, Lubana, Ueda & Tanaka, "What shapes the loss landscape of self-supervised learning?"
(ICLR 2023, arXiv:2210.00638). See that module's docstring for what is derived here and what is taken from
the paper.

``synthetic`` (torch): the same linear model trained by SGD on Gaussian views (or class means plus noise), with
the theory's losses or the project's objectives, to check the predictions (``benchmarks/theory_phase_diagram.py``).

``normalised`` (torch): the normalised (cosine) NT-Xent the project trains - what follows in closed form (scale
invariance, a high-temperature expansion) and a numerical landscape for the rest.
"""

from .linear_ssl import (
    BiasedPrediction,
    LinearSSLPrediction,
    QuarticLandscape,
    additive_augmentation_view_covariances,
    alignment_variance_landscape,
    biased_landscape,
    class_collapse_weight_decays,
    class_mixture_view_covariances,
    critical_weight_decay,
    infonce_landscape,
    landscape_loss,
    long_tail_class_priors,
    origin_is_local_minimum,
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

__all__ = [
    "BiasedPrediction",
    "LinearSSLPrediction",
    "QuarticLandscape",
    "additive_augmentation_view_covariances",
    "alignment_variance_landscape",
    "biased_landscape",
    "class_collapse_weight_decays",
    "class_mixture_view_covariances",
    "critical_weight_decay",
    "infonce_landscape",
    "landscape_loss",
    "long_tail_class_priors",
    "origin_is_local_minimum",
    "predict_stationary_solution",
    "predict_with_bias",
    "singular_value_near_threshold",
    "spectral_contrastive_landscape",
    "spectral_contrastive_sample_loss",
    "surviving_class_directions",
    "uncentred_view_covariances",
    "unnormalised_infonce_loss",
    "unnormalised_infonce_sample_loss",
]
