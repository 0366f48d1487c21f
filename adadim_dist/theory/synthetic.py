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
    """Per-coordinate data variances ``a_i`` and augmentation-noise variances ``b_i`` (diagonal A and B), and
    an optional data mean ``mu`` (default zero)."""

    data_variances: tuple[float, ...]
    augmentation_variances: tuple[float, ...]
    data_mean: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.data_variances) != len(self.augmentation_variances):
            raise ValueError("data_variances and augmentation_variances must have the same length")
        if self.data_mean is not None and len(self.data_mean) != len(self.data_variances):
            raise ValueError("data_mean must have one entry per coordinate")
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

    @property
    def mean(self) -> np.ndarray:
        return np.zeros(self.dim) if self.data_mean is None else np.array(self.data_mean, dtype=float)

    def sample_inputs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Un-augmented samples ``x`` (what a probe reads)."""
        data_std = torch.tensor(self.data_variances, dtype=torch.float64).sqrt()
        x = torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * data_std
        return x if self.data_mean is None else x + torch.tensor(self.data_mean, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        noise_std = torch.tensor(self.augmentation_variances, dtype=torch.float64).sqrt()
        x = self.sample_inputs(n, generator)
        views = [x + torch.randn(n, self.dim, generator=generator, dtype=torch.float64) * noise_std for _ in "ab"]
        return views[0], views[1]


@dataclass(frozen=True)
class ClassMixtureViews:
    """Class means plus noise (``linear_ssl.class_mixture_view_covariances``): class c with frequency
    ``priors[c]`` has mean ``e_c`` in R^dim; a sample is ``e_c + xi``, ``xi ~ N(0, w I)``; each view adds
    ``eps_v ~ N(0, sigma^2 I)``. Zero-mean it is not: the theory's moments are uncentred (no bias)."""

    priors: tuple[float, ...]
    augmentation_variance: float
    within_class_variance: float = 0.0
    num_dims: int | None = None

    @property
    def dim(self) -> int:
        return len(self.priors) if self.num_dims is None else self.num_dims

    def sample_labelled(self, n: int, generator: torch.Generator,
                        balanced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, labels)``: un-augmented samples and their classes (drawn from the priors, or uniformly)."""
        weights = torch.ones(len(self.priors)) if balanced else torch.tensor(self.priors)
        labels = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
        x = torch.nn.functional.one_hot(labels, self.dim).double()
        if self.within_class_variance:
            x = x + math.sqrt(self.within_class_variance) * torch.randn(n, self.dim, generator=generator,
                                                                        dtype=torch.float64)
        return x, labels

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.sample_labelled(n, generator)
        noise = math.sqrt(self.augmentation_variance)
        views = [x + noise * torch.randn(n, self.dim, generator=generator, dtype=torch.float64) for _ in "ab"]
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
    bias: np.ndarray | None = None  # (k,), when trained with one

    @property
    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.weight, compute_uv=False)


def train_linear_encoder(
    loss: ViewLoss,
    views: GaussianViews | ClassMixtureViews,
    weight_decay: float,
    *,
    steps: int = 1500,
    batch_size: int = 256,
    lr: float = 0.05,
    momentum: float = 0.9,
    init_scale: float = 0.1,
    seed: int = 0,
    output_dim: int | None = None,
    bias: bool = False,
) -> TrainedLinearEncoder:
    """SGD with momentum and a cosine learning-rate decay on ``loss(W x1 + c, W x2 + c) + weight_decay ||W||_F^2``.

    Fresh views every step (the expected loss is what the theory solves), float64, W of shape
    (``output_dim``, d) (default square) initialised at ``init_scale`` / sqrt(d) per entry; with ``bias`` a
    bias c (initialised at 0, not decayed, as LARS exempts biases). The cosine decay lets the last steps settle
    instead of jittering around the minimum, so small strengths are measured, not gradient noise.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = views.dim if output_dim is None else int(output_dim)
    weight = (init_scale / math.sqrt(views.dim)) * torch.randn(rows, views.dim, generator=generator,
                                                               dtype=torch.float64)
    weight.requires_grad_(True)
    offset = torch.zeros(rows, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([weight, offset] if bias else [weight], lr=lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    value = torch.tensor(float("nan"))
    for _ in range(steps):
        view1, view2 = views.sample(batch_size, generator)
        features1, features2 = view1 @ weight.T, view2 @ weight.T
        if bias:
            features1, features2 = features1 + offset, features2 + offset
        value = loss(features1, features2) + weight_decay * weight.pow(2).sum()
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss diverged ({value.item()}) at lr {lr}; lower lr")
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        schedule.step()
    trained = weight.detach().numpy()
    strengths = np.linalg.norm(trained, axis=0)
    collapsed = collapsed_directions(strengths)
    return TrainedLinearEncoder(trained, strengths, collapsed, int((~collapsed).sum()), value.item(),
                                offset.detach().numpy().copy() if bias else None)


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


def ridge_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    ridge: float = 1e-3,
) -> tuple[float, np.ndarray]:
    """A linear probe: ridge regression of one-hot labels on the features (with an unpenalised intercept),
    predict the argmax. Returns (test accuracy, per-class test accuracy; NaN for a class absent from the test).

    The ridge penalty is in the features' own units, so a direction the encoder reads with a tiny strength
    (a collapsed one) is ignored, as it would be by any probe trained with finite data and regularisation.
    """
    train_features, test_features = np.asarray(train_features, float), np.asarray(test_features, float)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    centre = train_features.mean(axis=0)
    centred = train_features - centre
    targets = np.eye(num_classes)[train_labels]
    target_mean = targets.mean(axis=0)
    coefficients = np.linalg.solve(centred.T @ centred + ridge * len(centred) * np.eye(centred.shape[1]),
                                   centred.T @ (targets - target_mean))
    predicted = ((test_features - centre) @ coefficients + target_mean).argmax(axis=1)
    per_class = np.array([np.mean(predicted[test_labels == c] == c) if np.any(test_labels == c) else np.nan
                          for c in range(num_classes)])
    return float(np.mean(predicted == test_labels)), per_class
