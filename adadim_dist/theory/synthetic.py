"""The linear theory against training: a linear encoder trained on synthetic Gaussian views (torch only).

The setting of ``linear_ssl``: data ``x ~ N(0, diag(a))`` and two views ``x + eps_v`` with independent
``eps_v ~ N(0, diag(b))``, so every input coordinate is an eigen-direction of both the data covariance A and
the augmentation covariance B. A linear encoder ``z = W x`` (W square, no bias, no projector) is trained with
SGD on fresh batches and an explicit ``gamma ||W||_F^2``, by any loss of two view batches: the theory's own
(``spectral_contrastive_sample_loss``, ``alignment_variance_sample_loss``) or the project's objectives
(``project_objective``: VICReg, NT-Xent and AdaDim as the service builds them, with R = Z = W x).

What is compared with the theory: the *strength* ``||W e_i||`` with which the encoder reads input direction
i (rotation-invariant: the same for ``O W``), and the learned rank. A direction counts as collapsed when its
strength is below ``COLLAPSE_RELATIVE`` of the strongest one (a scale-free test: NT-Xent is scale-invariant,
and weight decay shrinks every direction of it alike), and every direction is collapsed when the strongest is
below ``COLLAPSE_ABSOLUTE`` (complete collapse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .linear_ssl import LinearSSLPrediction

#: A direction read with less than this fraction of the strongest direction's strength counts as collapsed.
COLLAPSE_RELATIVE = 0.1
#: ... and every direction counts as collapsed when the strongest is read with less than this.
COLLAPSE_ABSOLUTE = 1e-2

ViewLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: SGD learning rates that train stably at b = 0, gamma = 0 (VICReg's weights of 25 need a smaller one); not
#: tuned per point of a phase diagram.
LEARNING_RATES = {"spectral": 0.05, "alignment_variance": 0.05, "vicreg": 0.01, "ntxent": 0.05, "adadim": 0.05}


@dataclass(frozen=True)
class GaussianViews:
    """Per-coordinate data variances ``a_i`` and augmentation-noise variances ``b_i`` (diagonal A and B)."""

    data_variances: tuple[float, ...]
    augmentation_variances: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.data_variances) != len(self.augmentation_variances):
            raise ValueError("data_variances and augmentation_variances must have the same length")
        if min(self.data_variances) <= 0 or min(self.augmentation_variances) < 0:
            raise ValueError("data variances must be > 0 and augmentation variances >= 0")

    @property
    def dim(self) -> int:
        return len(self.data_variances)

    @property
    def data_covariance(self) -> np.ndarray:
        return np.diag(self.data_variances)

    @property
    def augmentation_covariance(self) -> np.ndarray:
        return np.diag(self.augmentation_variances)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data_std = torch.tensor(self.data_variances, dtype=torch.float64).sqrt()
        noise_std = torch.tensor(self.augmentation_variances, dtype=torch.float64).sqrt()
        x = torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * data_std
        views = [x + torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * noise_std for _ in "ab"]
        return views[0], views[1]


def alignment_variance_sample_loss(features_view1: torch.Tensor, features_view2: torch.Tensor) -> torch.Tensor:
    """Mini-batch estimate of ``linear_ssl.alignment_variance_landscape``'s loss (without weight decay).

    ``mean ||f1 - f2||^2 - 2 Tr[M] + ||M||_F^2`` with ``M`` the second-moment matrix of the view-averaged
    features ``(f1 + f2) / 2`` (zero-mean data, so no centring); its expectation is the landscape's loss up
    to the O(1/n) bias of ``||M||_F^2``.
    """
    mean_view = 0.5 * (features_view1 + features_view2)
    moment = mean_view.T @ mean_view / mean_view.shape[0]
    alignment = (features_view1 - features_view2).pow(2).sum(dim=1).mean()
    return alignment - 2.0 * torch.trace(moment) + moment.pow(2).sum()


def project_objective(name: str, total_steps: int) -> ViewLoss:
    """The service's objective ``name`` (vicreg, ntxent, adadim: the study's variants) as a loss of two views.

    The linear encoder's output is both R and Z, so AdaDim's I(R;Z) term is the entropy of the encoding.
    """
    from ..objectives.adadim import AdaDim

    settings = {
        "vicreg": dict(alpha_mode="fixed", alpha_value=0.0, mi_sign="off"),
        "ntxent": dict(alpha_mode="fixed", alpha_value=1.0, mi_sign="off"),
        "adadim": dict(alpha_mode="adaptive", alpha_ema=0.9),  # as shipped: MI maximised, β = γα, γ = 1
    }
    if name not in settings:
        raise ValueError(f"objective: one of {', '.join(settings)}, got {name!r}")
    objective = AdaDim(**settings[name], total_steps=total_steps)

    def loss(features_view1: torch.Tensor, features_view2: torch.Tensor) -> torch.Tensor:
        value, _ = objective(features_view1, features_view2, features_view1, features_view2, with_stats=False)
        objective.step()
        return value

    return loss


@dataclass(frozen=True)
class TrainedLinearEncoder:
    weight: np.ndarray  # (k, d)
    strengths: np.ndarray  # ||W e_i|| per input direction i
    collapsed: np.ndarray  # bool per input direction
    rank: int  # directions not collapsed
    final_loss: float


def train_linear_encoder(
    loss: ViewLoss,
    views: GaussianViews,
    weight_decay: float,
    *,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 0.05,
    momentum: float = 0.9,
    init_scale: float = 0.1,
    seed: int = 0,
) -> TrainedLinearEncoder:
    """SGD with momentum and a cosine learning-rate decay on ``loss(W x1, W x2) + weight_decay ||W||_F^2``.

    Fresh views every step (the expected loss is what the theory solves), float64, a square W initialised at
    ``init_scale`` / sqrt(d) per entry. The cosine decay lets the last steps settle instead of jittering
    around the minimum, so small strengths are measured, not gradient noise.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = (init_scale / math.sqrt(views.dim)) * torch.randn(views.dim, views.dim, generator=generator,
                                                               dtype=torch.float64)
    weight.requires_grad_(True)
    optimizer = torch.optim.SGD([weight], lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    value = torch.tensor(float("nan"))
    for _ in range(steps):
        view1, view2 = views.sample(batch_size, generator)
        value = loss(view1 @ weight.T, view2 @ weight.T) + weight_decay * weight.pow(2).sum()
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss diverged ({value.item()}) at lr {lr}; lower lr")
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        schedule.step()
    trained = weight.detach().numpy()
    strengths = np.linalg.norm(trained, axis=0)
    collapsed = collapsed_directions(strengths)
    return TrainedLinearEncoder(trained, strengths, collapsed, int((~collapsed).sum()), value.item())


def collapsed_directions(strengths: np.ndarray) -> np.ndarray:
    """Which directions count as collapsed, from their strengths (module docstring)."""
    strengths = np.asarray(strengths, dtype=float)
    strongest = float(strengths.max(initial=0.0))
    if strongest < COLLAPSE_ABSOLUTE:
        return np.ones_like(strengths, dtype=bool)
    return strengths < COLLAPSE_RELATIVE * strongest


def predicted_strengths(prediction: LinearSSLPrediction) -> np.ndarray:
    """``||W* e_i||`` of the theory's minimiser, per input direction (rotation-invariant)."""
    return np.linalg.norm(prediction.weight, axis=0)
