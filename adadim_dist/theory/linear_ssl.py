"""Loss landscape, collapse conditions and global minima of self-supervised learning with a linear encoder.

Context: Ziyin, Lubana, Ueda & Tanaka, "What shapes the loss landscape of self-supervised learning?" (ICLR
2023, arXiv:2210.00638) studies SSL for a *linear* model and asks when complete collapse (zero-rank
representation) and dimensional collapse (low-rank representation) happen, and what weight decay,
normalisation, bias and data imbalance do to them. Its abstract and introduction were checked; its sections,
theorems and equations could not be read here, so no section, theorem or equation number of the paper is
cited below. Every closed form in this module is derived in its docstring, from an objective written out in
full, and is checked numerically in ``tests/unit/test_theory.py``. Where the paper's own loss or constants
differ, trust the paper and treat this module as an exactly solvable model in the paper's setting.

Setting (the paper's linear model with two augmented views):

* data ``x`` in R^d with zero mean and covariance ``A = E[x x^T]``;
* two views ``x1, x2`` of the same sample. For additive augmentation noise ``x_v = x + eps_v`` with
  ``eps_1, eps_2`` independent, zero mean, covariance ``B`` and independent of ``x``:
  cross-view covariance ``S = E[x1 x2^T] = A`` and single-view covariance ``C = E[x1 x1^T] = A + B``
  (``additive_augmentation_view_covariances``);
* linear encoder ``f(x) = W x`` with ``W`` of shape (k, d) (k = representation width), weight decay
  ``gamma * ||W||_F^2``.

Both objectives implemented here reduce, in expectation over data and augmentations, to the *quartic
landscape*

    L(W) = -Tr[W P W^T] + Tr[(W Q W^T)^2] + gamma ||W||_F^2,                                   (L)

with a symmetric "growth" matrix ``P`` (what the loss rewards at second order) and a positive-definite
"saturation" matrix ``Q`` (what the quartic term penalises). ``QuarticLandscape`` holds ``(P, Q, gamma)``.

Closed-form solution of (L) (derived here). Put ``G = W^T W`` and ``N = Q^{1/2} G Q^{1/2}``; then
``Tr[(WQW^T)^2] = Tr[N^2]`` and ``Tr[W P W^T] - gamma Tr[G] = Tr[R N]`` with the whitened growth matrix

    R = Q^{-1/2} (P - gamma I) Q^{-1/2},

so ``L = ||N - R/2||_F^2 - ||R||_F^2 / 4``. ``N`` ranges over PSD matrices of rank <= k, so the global minimum
keeps the k largest *positive* eigenvalues ``rho_i`` of ``R`` (eigenvectors ``u_i``):

    N* = sum_{i <= k, rho_i > 0} (rho_i / 2) u_i u_i^T,      W* = O diag(sqrt(rho_i / 2)) U^T Q^{-1/2},
    L* = -sum_{i <= k, rho_i > 0} rho_i^2 / 4,

for any orthogonal ``O`` (the representation is defined up to a rotation). Consequences:

* **dimensional collapse**: a whitened direction collapses iff ``rho_i <= 0``; by Sylvester's law of
  inertia the number of surviving directions is the number of eigenvalues of ``P`` above ``gamma``, and the
  learned rank is ``min(k, #{eig(P) > gamma})``;
* **complete collapse**: ``W* = 0`` iff ``gamma >= lambda_max(P)`` (``critical_weight_decay``); the Hessian
  of (L) at ``W = 0`` is ``2 I_k (x) (gamma I - P)``, so below that value the collapsed point is a saddle
  and above it a local (and global) minimum (``origin_is_local_minimum``);
* **other stationary points**: ``dL/dW = 2 W (gamma I - P) + 4 W Q G Q`` vanishes iff, with ``V = W Q^{1/2}``,
  ``V (R - 2 V^T V) = 0``; so (for distinct ``rho_i``) stationary points keep any subset of at most k
  directions with ``rho_i > 0`` at ``N``-eigenvalue ``rho_i / 2`` and only the top-k subset is the minimum;
* **commuting case** (``P`` and ``Q`` diagonal in one basis, eigenvalues ``p_i``, ``q_i``): direction i
  survives iff ``p_i > gamma``, with squared singular value ``(p_i - gamma) / (2 q_i^2)`` of ``W`` and
  variance ``(p_i - gamma) / (2 q_i)`` of the representation ``W x`` along it when ``Q = C``.

Pure numpy (prediction) and numpy-or-torch (loss); no Ray, FFCV or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # torch is optional here: the loss works on numpy arrays and on torch tensors alike.
    import torch
except ImportError:  # pragma: no cover - torch is a project dependency
    torch = None

# Eigenvalues within this relative tolerance of the threshold count as "not above it": a direction exactly
# at the threshold has a zero minimiser, and round-off must not turn it into a spurious surviving direction.
_RELATIVE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class QuarticLandscape:
    """The expected SSL loss (L) ``-Tr[W P W^T] + Tr[(W Q W^T)^2] + gamma ||W||_F^2`` of a linear encoder.

    ``growth`` is ``P`` (symmetric, d x d), ``saturation`` is ``Q`` (symmetric positive definite, d x d),
    ``weight_decay`` is ``gamma >= 0``. Build one with ``spectral_contrastive_landscape`` or
    ``alignment_variance_landscape``, or directly for another loss that reduces to this form.
    """

    growth: np.ndarray
    saturation: np.ndarray
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        growth = _symmetric(self.growth, "growth")
        saturation = _symmetric(self.saturation, "saturation")
        if growth.shape != saturation.shape:
            raise ValueError(f"growth {growth.shape} and saturation {saturation.shape} must have the same shape")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        # The closed form whitens by Q^{-1/2}; a singular Q leaves directions the quartic term cannot bound.
        if np.linalg.eigvalsh(saturation).min() <= 0:
            raise ValueError("saturation matrix Q must be positive definite")
        object.__setattr__(self, "growth", growth)
        object.__setattr__(self, "saturation", saturation)
        object.__setattr__(self, "weight_decay", float(self.weight_decay))

    @property
    def dim(self) -> int:
        return self.growth.shape[0]


@dataclass(frozen=True)
class LinearSSLPrediction:
    """Global minimum of a ``QuarticLandscape`` for a representation of width ``output_dim``.

    Arrays of length ``output_dim`` are sorted in decreasing order and hold zeros for collapsed directions.

    * ``weight``: one minimiser ``W*`` (output_dim x d); every other one is ``O @ weight`` with O orthogonal.
    * ``gram_matrix``: ``W*^T W*`` (d x d), the rotation-invariant part of the solution.
    * ``squared_singular_values``: eigenvalues of ``W* W*^T`` (squared singular values of ``W*``).
    * ``representation_variances``: eigenvalues of ``W* Q W*^T`` (``rho_i / 2``); with ``Q`` the single-view
      covariance (spectral contrastive loss) these are the variances of the learned representation.
    * ``whitened_growth_rates``: all d eigenvalues ``rho_i`` of ``R = Q^{-1/2} (P - gamma I) Q^{-1/2}``.
    * ``input_directions``: d x d, column i is the unit input-space direction ``Q^{-1/2} u_i`` read out by
      the i-th learned feature (for diagonal P and Q, a coordinate axis).
    * ``survives``: length d, True where direction i is kept (``rho_i > 0`` and among the top ``output_dim``).
    * ``rank``: number of surviving directions (0 means complete collapse).
    * ``critical_weight_decay``: ``lambda_max(P)``; complete collapse for ``weight_decay`` at or above it.
    * ``minimum_loss``: value of (L) at the minimum, ``-sum rho_i^2 / 4`` over surviving directions.
    """

    weight: np.ndarray
    gram_matrix: np.ndarray
    squared_singular_values: np.ndarray
    representation_variances: np.ndarray
    whitened_growth_rates: np.ndarray
    input_directions: np.ndarray
    survives: np.ndarray
    rank: int
    critical_weight_decay: float
    minimum_loss: float

    @property
    def complete_collapse(self) -> bool:
        return self.rank == 0


def additive_augmentation_view_covariances(
    data_covariance: np.ndarray, augmentation_covariance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-view and single-view covariances ``(S, C) = (A, A + B)`` for additive augmentation noise.

    Views ``x_v = x + eps_v`` with ``eps_1, eps_2`` i.i.d., zero mean, covariance ``B``, independent of ``x``:
    ``E[x1 x2^T] = A`` because the two noises are independent of each other, and
    ``E[x1 x1^T] = A + B`` because each view carries its own noise.
    """
    data = _symmetric(data_covariance, "data_covariance")
    augmentation = _symmetric(augmentation_covariance, "augmentation_covariance")
    if data.shape != augmentation.shape:
        raise ValueError(f"data {data.shape} and augmentation {augmentation.shape} covariances differ in shape")
    return data.copy(), data + augmentation


def spectral_contrastive_landscape(
    data_covariance: np.ndarray | None,
    augmentation_covariance: np.ndarray | None = None,
    weight_decay: float = 0.0,
    **views: np.ndarray,
) -> QuarticLandscape:
    """Expected spectral contrastive loss of a linear encoder as a ``QuarticLandscape`` with P = 2S, Q = C.

    Loss (HaoChen et al., 2021): ``-2 E[f(x1)^T f(x2)] + E[(f(x1)^T f(x2'))^2] + gamma ||W||^2``, where
    ``x2'`` is a view of an independent sample (a negative pair). With ``f = W x`` and ``G = W^T W``:
    ``E[x1^T G x2] = Tr[W S W^T]`` and ``E[(x1^T G x2')^2] = Tr[G C G C] = Tr[(W C W^T)^2]`` (x1 and x2' are
    independent and both have covariance C). Hence P = 2S (symmetrised), Q = C.

    Pass ``data_covariance`` A and ``augmentation_covariance`` B for additive noise (S = A, C = A + B), or
    give ``cross_view_covariance`` S and ``view_covariance`` C directly for another augmentation (then
    ``data_covariance`` is ignored and may be None).

    Prediction for additive noise, commuting A and B: direction i survives iff ``2 a_i > gamma`` (the
    augmentation variance only shrinks it), ``W`` squared singular value ``(2a_i - gamma) / (2 (a_i + b_i)^2)``,
    representation variance ``(2a_i - gamma) / (2 (a_i + b_i))`` (``a_i / (a_i + b_i)`` without weight decay);
    complete collapse iff ``gamma >= 2 lambda_max(A)``. An augmentation that lowers the cross-view covariance
    ``S`` (views sharing less of the sample) collapses the directions where ``2 s_i <= gamma``.
    """
    cross_view, single_view = _view_covariances(data_covariance, augmentation_covariance, **views)
    return QuarticLandscape(growth=2.0 * cross_view, saturation=single_view, weight_decay=weight_decay)


def alignment_variance_landscape(
    data_covariance: np.ndarray | None,
    augmentation_covariance: np.ndarray | None = None,
    weight_decay: float = 0.0,
    **views: np.ndarray,
) -> QuarticLandscape:
    """Non-contrastive alignment + variance loss of a linear encoder as a ``QuarticLandscape``: P = 3S - C.

    Loss (a polynomial, VICReg-like objective constructed for this module, not taken from the paper):
    ``E||f(x1) - f(x2)||^2 - 2 Tr[W Cbar W^T] + Tr[(W Cbar W^T)^2] + gamma ||W||^2`` with ``Cbar`` the
    covariance of the view-averaged input ``(x1 + x2) / 2``. The alignment term is
    ``Tr[W (2C - 2S) W^T]`` and ``Cbar = (C + S) / 2``, so P = 2 Cbar - (2C - 2S) = 3S - C and Q = Cbar.

    It shows augmentation-driven dimensional collapse: the alignment term charges each view's augmentation
    noise in full, while the variance bonus sees it only halved in the view average. For additive noise
    (S = A, C = A + B) P = 2A - B, Q = A + B/2, so with commuting A and B direction i collapses iff its
    augmentation variance ``b_i >= 2 a_i - gamma``; survivors have ``W`` squared singular value
    ``(2a_i - b_i - gamma) / (2 (a_i + b_i/2)^2)``.
    """
    cross_view, single_view = _view_covariances(data_covariance, augmentation_covariance, **views)
    return QuarticLandscape(
        growth=3.0 * cross_view - single_view,
        saturation=0.5 * (single_view + cross_view),
        weight_decay=weight_decay,
    )


def landscape_loss(weight, landscape: QuarticLandscape):
    """Value of (L), ``-Tr[W P W^T] + Tr[(W Q W^T)^2] + gamma ||W||_F^2``, for a (k, d) weight.

    ``weight`` may be a numpy array (returns a float) or a torch tensor (returns a differentiable scalar
    tensor, so gradient descent on it can be compared with ``predict_stationary_solution``).
    """
    growth, saturation = landscape.growth, landscape.saturation
    if torch is not None and isinstance(weight, torch.Tensor):
        growth = torch.as_tensor(growth, dtype=weight.dtype, device=weight.device)
        saturation = torch.as_tensor(saturation, dtype=weight.dtype, device=weight.device)
    elif not isinstance(weight, np.ndarray):
        weight = np.asarray(weight, dtype=float)
    if weight.ndim != 2 or weight.shape[1] != landscape.dim:
        raise ValueError(f"weight must have shape (k, {landscape.dim}), got {tuple(weight.shape)}")
    # Tr[W P W^T] = sum((W P) * W): avoids forming the k x k product just to take its trace.
    growth_term = ((weight @ growth) * weight).sum()
    saturated = weight @ saturation @ weight.T
    result = -growth_term + (saturated * saturated).sum() + landscape.weight_decay * (weight * weight).sum()
    return float(result) if isinstance(result, np.generic | float) else result


def spectral_contrastive_sample_loss(features_view1, features_view2):
    """Unbiased mini-batch estimate of the spectral contrastive loss (without weight decay), in torch.

    ``features_view1[i]`` and ``features_view2[i]`` are the encodings of the two views of sample i (shape
    (n, k), n >= 2). Positive pairs are ``(i, i)``, negative pairs ``(i, j != i)``:
    ``-2 mean_i <f1_i, f2_i> + mean_{i != j} <f1_i, f2_j>^2``; its expectation for ``f = W x`` is
    ``landscape_loss(W, spectral_contrastive_landscape(...))`` with ``weight_decay = 0``.
    """
    n = features_view1.shape[0]
    if n < 2 or features_view2.shape != features_view1.shape:
        raise ValueError("need two (n, k) feature batches of equal shape with n >= 2")
    similarities = features_view1 @ features_view2.T
    positive = torch.diagonal(similarities).mean()
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=similarities.device)
    negative = similarities[off_diagonal].pow(2).mean()
    return -2.0 * positive + negative


def critical_weight_decay(landscape: QuarticLandscape) -> float:
    """Smallest weight decay giving complete collapse (``W* = 0``): ``lambda_max(P)``, or 0 if P has none > 0.

    ``R = Q^{-1/2} (P - gamma I) Q^{-1/2}`` is congruent to ``P - gamma I``, so it has no positive eigenvalue
    (nothing survives) exactly when ``gamma >= lambda_max(P)``; Q sets magnitudes, never this threshold.
    """
    return max(float(np.linalg.eigvalsh(landscape.growth).max()), 0.0)


def origin_is_local_minimum(landscape: QuarticLandscape) -> bool:
    """Whether the collapsed point ``W = 0`` is a local minimum of (L) (otherwise a saddle).

    Near 0 the quartic term is negligible and ``L ~ Tr[W (gamma I - P) W^T]``: a minimum iff
    ``gamma >= lambda_max(P)`` (at equality the flat directions are held by the quartic term, Q > 0).
    """
    return landscape.weight_decay >= critical_weight_decay(landscape) * (1.0 - _RELATIVE_TOLERANCE)


def predict_stationary_solution(landscape: QuarticLandscape, output_dim: int | None = None) -> LinearSSLPrediction:
    """Global minimum of (L) for a linear encoder with ``output_dim`` outputs (default: d, no rank limit).

    Whitens by ``Q^{-1/2}``, eigendecomposes ``R = Q^{-1/2} (P - gamma I) Q^{-1/2}`` and keeps the
    ``output_dim`` largest positive eigenvalues at ``N``-eigenvalue ``rho_i / 2`` (module docstring).
    """
    dim = landscape.dim
    output_dim = dim if output_dim is None else int(output_dim)
    if output_dim < 1:
        raise ValueError(f"output_dim must be >= 1, got {output_dim}")

    saturation_values, saturation_vectors = np.linalg.eigh(landscape.saturation)
    inverse_sqrt_saturation = (saturation_vectors / np.sqrt(saturation_values)) @ saturation_vectors.T
    shifted_growth = landscape.growth - landscape.weight_decay * np.eye(dim)
    whitened_growth = _symmetric(inverse_sqrt_saturation @ shifted_growth @ inverse_sqrt_saturation, "R")
    rates, eigenvectors = np.linalg.eigh(whitened_growth)
    order = np.argsort(rates)[::-1]
    rates, eigenvectors = rates[order], eigenvectors[:, order]

    # A rate that is positive only by round-off (direction exactly at the threshold) counts as collapsed.
    # Scale: the size of the two terms R is made of, so the tolerance follows the problem's units.
    whitened_terms = np.linalg.norm(inverse_sqrt_saturation @ landscape.growth @ inverse_sqrt_saturation, 2)
    scale = whitened_terms + landscape.weight_decay / saturation_values.min()
    positive = rates > _RELATIVE_TOLERANCE * max(scale, np.finfo(float).tiny)
    survives = positive & (np.arange(dim) < output_dim)
    rank = int(survives.sum())

    kept_values = np.where(survives, rates / 2.0, 0.0)  # eigenvalues of N* = Q^{1/2} G* Q^{1/2}
    readout = inverse_sqrt_saturation @ eigenvectors  # column i: input-space readout of feature i
    weight = np.zeros((output_dim, dim))
    n_rows = min(output_dim, dim)
    weight[:n_rows] = (np.sqrt(kept_values[:n_rows])[:, None]) * readout[:, :n_rows].T
    gram = weight.T @ weight

    squared_singular_values = np.sort(np.linalg.eigvalsh(weight @ weight.T))[::-1].clip(min=0.0)
    squared_singular_values[rank:] = 0.0  # exact zeros for collapsed directions, not round-off
    representation_variances = np.zeros(output_dim)
    representation_variances[:n_rows] = kept_values[:n_rows]

    return LinearSSLPrediction(
        weight=weight,
        gram_matrix=gram,
        squared_singular_values=squared_singular_values,
        representation_variances=representation_variances,
        whitened_growth_rates=rates,
        input_directions=readout / np.linalg.norm(readout, axis=0, keepdims=True),
        survives=survives,
        rank=rank,
        critical_weight_decay=critical_weight_decay(landscape),
        minimum_loss=float(-(kept_values**2).sum()),
    )


def _view_covariances(data_covariance, augmentation_covariance, cross_view_covariance=None, view_covariance=None):
    """(S, C) from either (A, B) under additive noise or from explicit (S, C) (the landscapes' keyword-only
    ``cross_view_covariance`` and ``view_covariance``; any other keyword is a TypeError)."""
    if cross_view_covariance is not None or view_covariance is not None:
        if cross_view_covariance is None or view_covariance is None:
            raise ValueError("give both cross_view_covariance and view_covariance, or neither")
        return _symmetric(cross_view_covariance, "cross_view_covariance"), _symmetric(view_covariance, "view_covariance")
    if data_covariance is None or augmentation_covariance is None:
        raise ValueError("give data_covariance and augmentation_covariance (or cross_view/view covariances)")
    return additive_augmentation_view_covariances(data_covariance, augmentation_covariance)


def _symmetric(matrix, name: str) -> np.ndarray:
    """A float copy of a square matrix, symmetrised: only the symmetric part enters a quadratic form."""
    array = np.array(matrix, dtype=float)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {array.shape}")
    return 0.5 * (array + array.T)
