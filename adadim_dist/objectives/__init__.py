"""Pure tensor maths of the AdaDim objective: losses, estimators and the α/β controller.

Imports torch only, never torch.distributed, Ray, FFCV or MLflow: collectives are injected by the caller.
"""

from .adadim import ALPHA_MODES, AdaDim, AlphaState, adadim_from_config, adaptive_alpha, scheduled_alpha
from .information import (
    alignment,
    effective_rank,
    gram_matrix,
    joint_entropy,
    matrix_entropy,
    mutual_information,
    renyi_entropy,
    uniformity,
)
from .losses import (
    barlow_twins_loss,
    covariance_loss,
    invariance_loss,
    nt_xent_loss,
    variance_loss,
    vicreg_loss,
    vicreg_terms,
)

__all__ = [
    "ALPHA_MODES",
    "AdaDim",
    "AlphaState",
    "adadim_from_config",
    "adaptive_alpha",
    "alignment",
    "barlow_twins_loss",
    "covariance_loss",
    "effective_rank",
    "gram_matrix",
    "invariance_loss",
    "joint_entropy",
    "matrix_entropy",
    "mutual_information",
    "nt_xent_loss",
    "renyi_entropy",
    "scheduled_alpha",
    "uniformity",
    "variance_loss",
    "vicreg_loss",
    "vicreg_terms",
]
