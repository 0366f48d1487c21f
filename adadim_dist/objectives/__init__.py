"""Pure tensor maths of the AdaDim objective: losses, estimators and the α/β controller.

Imports torch only, never torch.distributed, Ray, FFCV or MLflow: collectives are injected by the caller.
Global-batch terms come in two forms: on gathered tensors (``nt_xent_loss``, ``information_terms``, …) and
sharded, from each worker's rows and all-reduced sums (``*_sharded``); see ``losses`` and ``information``.
"""

from .adadim import ALPHA_MODES, COMPUTE_FORMS, AdaDim, AlphaState, adadim_from_config, adaptive_alpha, scheduled_alpha
from .information import (
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
    renyi2_block_sums,
    renyi2_information_terms,
    renyi_entropy,
    uniformity,
    uniformity_sharded,
)
from .losses import (
    barlow_twins_loss,
    barlow_twins_loss_sharded,
    covariance_loss,
    invariance_loss,
    nt_xent_loss,
    nt_xent_loss_sharded,
    variance_loss,
    vicreg_loss,
    vicreg_terms,
    vicreg_terms_sharded,
)

__all__ = [
    "ALPHA_MODES",
    "COMPUTE_FORMS",
    "AdaDim",
    "AlphaState",
    "adadim_from_config",
    "adaptive_alpha",
    "alignment",
    "alignment_sharded",
    "barlow_twins_loss",
    "barlow_twins_loss_sharded",
    "covariance_loss",
    "effective_rank",
    "effective_rank_from_gram",
    "effective_rank_sharded",
    "gram_block",
    "gram_matrix",
    "information_terms",
    "information_terms_sharded",
    "invariance_loss",
    "joint_entropy",
    "matrix_entropy",
    "mutual_information",
    "nt_xent_loss",
    "nt_xent_loss_sharded",
    "renyi2_block_sums",
    "renyi2_information_terms",
    "renyi_entropy",
    "scheduled_alpha",
    "uniformity",
    "uniformity_sharded",
    "variance_loss",
    "vicreg_loss",
    "vicreg_terms",
    "vicreg_terms_sharded",
]
