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

Extensions (issue 31), each derived in its docstring:

* unnormalised InfoNCE (``infonce_landscape``): ½ × the spectral contrastive landscape at temperature 1, exactly
  for Gaussian views; with a data mean or a bias the two part (``unnormalised_infonce_loss``);
* a data mean and a bias (``uncentred_view_covariances``, ``biased_landscape``, ``predict_with_bias``);
* class imbalance (``class_mixture_view_covariances``, ``class_collapse_weight_decays``,
  ``surviving_class_directions``): tail classes' directions collapse first;
* the shape of a transition (``singular_value_near_threshold``): singular value ∝ sqrt(p - gamma).

The normalised (cosine) InfoNCE is in ``normalised``.

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
    # sum_{i != j} <f1_i, f2_j>^2 = Tr[(F1^T F1)(F2^T F2)] - sum_i <f1_i, f2_i>^2: O(n k^2), not O(n^2 k).
    paired = (features_view1 * features_view2).sum(dim=1)
    all_pairs = ((features_view1.T @ features_view1) * (features_view2.T @ features_view2)).sum()
    negative = (all_pairs - paired.pow(2).sum()) / (n * (n - 1))
    return -2.0 * paired.mean() + negative


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


# ---------------------------------------------------------------------------------------------------- InfoNCE
def infonce_landscape(
    data_covariance: np.ndarray | None,
    augmentation_covariance: np.ndarray | None = None,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    **views: np.ndarray,
) -> QuarticLandscape:
    """Unnormalised InfoNCE of a linear encoder as a ``QuarticLandscape``: P = S / tau, Q = C / (sqrt(2) tau).

    Loss (InfoNCE with dot-product similarities, no normalisation, temperature tau, population negatives):
    ``E_x1[ -s(x1, x2) + log E_x2' exp s(x1, x2') ] + gamma ||W||^2`` with ``s(u, v) = (W u)^T (W v) / tau``
    and ``x2'`` a view of an independent sample. Derivation (zero-mean views): given x1, ``s(x1, x2')`` is
    linear in x2', with mean 0 and variance ``f1^T W C W^T f1 / tau^2``. Its cumulant expansion
    ``log E exp s = k1 + k2 / 2 + k3 / 6 + k4 / 24 + ...`` has ``k1 = 0`` and ``k2 = f1^T W C W^T f1 / tau^2``,
    whose mean over x1 is ``Tr[(W C W^T)^2] / tau^2``; ``k3`` vanishes for symmetric views and ``k_n`` is
    O(||W||^{2n}). So

        InfoNCE(W) = -Tr[W S W^T] / tau + Tr[(W C W^T)^2] / (2 tau^2) + O(||W||^8),

    **exactly** (no remainder) when the views are Gaussian, because then s is Gaussian given x1. At tau = 1 this
    is ½ × ``spectral_contrastive_landscape`` (without weight decay): unnormalised InfoNCE near W = 0 is half the
    spectral contrastive loss. With weight decay the halving moves the threshold: direction i survives iff
    ``s_i / tau > gamma`` (spectral contrastive: ``2 s_i > gamma``), with W squared singular value
    ``tau (s_i - tau gamma) / c_i^2`` in the commuting case. A mini-batch estimate whose denominator also holds
    the positive (as the project's NT-Xent does) shifts P by a relative O(1/batch)
    (``unnormalised_infonce_sample_loss``).
    With a data mean or a bias the two losses part: see ``unnormalised_infonce_loss``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cross_view, single_view = _view_covariances(data_covariance, augmentation_covariance, **views)
    return QuarticLandscape(growth=cross_view / temperature, saturation=single_view / (np.sqrt(2.0) * temperature),
                            weight_decay=weight_decay)


def unnormalised_infonce_loss(
    weight: np.ndarray,
    data_covariance: np.ndarray,
    augmentation_covariance: np.ndarray,
    data_mean: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    temperature: float = 1.0,
    weight_decay: float = 0.0,
) -> float:
    """Population unnormalised InfoNCE (as in ``infonce_landscape``) of ``f(x) = W x + bias`` for Gaussian views
    ``x + eps_v`` with ``x ~ N(data_mean, A)``, ``eps_v ~ N(0, B)``; exact, in closed form.

    Derivation: put ``m = W mu + bias`` (the representation's mean) and ``Sigma = W C W^T`` (its covariance,
    C = A + B). Given x1, ``s(x1, x2') = f1^T (m + y') / tau`` with ``y' ~ N(0, Sigma)``, so
    ``log E exp s = f1^T m / tau + f1^T Sigma f1 / (2 tau^2)``; averaging over x1 and subtracting the positive
    ``E[f1^T f2] / tau = (||m||^2 + Tr[W A W^T]) / tau``:

        InfoNCE(W, bias) = -Tr[W A W^T] / tau + Tr[Sigma^2] / (2 tau^2) + m^T Sigma m / (2 tau^2) + gamma ||W||^2.

    The ``||m||^2`` of the positive and of the partition function cancel (softmax is shift-invariant), so the
    mean only *costs*: with a free bias the minimum puts m = 0 (or in Sigma's null space) and W is the
    zero-mean solution, whatever the data mean; without a bias, ``m = W mu`` is forced and the encoder is
    penalised for reading the mean direction. The spectral contrastive loss instead *rewards* a constant
    feature (``predict_with_bias``) - the two losses agree (up to the factor ½) only for zero-mean views.
    """
    weight = np.asarray(weight, dtype=float)
    data = _symmetric(data_covariance, "data_covariance")
    single_view = data + _symmetric(augmentation_covariance, "augmentation_covariance")
    mean = np.zeros(weight.shape[1]) if data_mean is None else np.asarray(data_mean, dtype=float)
    offset = weight @ mean + (0.0 if bias is None else np.asarray(bias, dtype=float))
    sigma = weight @ single_view @ weight.T
    return float(-np.trace(weight @ data @ weight.T) / temperature
                 + ((sigma * sigma).sum() + offset @ sigma @ offset) / (2.0 * temperature**2)
                 + weight_decay * (weight * weight).sum())


def unnormalised_infonce_sample_loss(features_view1, features_view2, temperature: float = 1.0,
                                     include_positive: bool = True):
    """Mini-batch unnormalised InfoNCE in torch: the project's NT-Xent (``objectives.losses.nt_xent_loss``)
    with the ``F.normalize`` removed, minus the log of the denominator's size so that it estimates the
    population loss of ``infonce_landscape`` (whose partition function is a mean, not a sum).

    Each of the 2n encodings is an anchor; its other view is the positive, and the denominator holds the
    2n - 2 encodings of other samples (``include_positive=False``) or those and the positive (True, as the
    project trains; this adds the positive's similarity to the partition function with weight 1 / (2n - 1), so
    P shrinks by that relative amount). The log of a batch mean underestimates the log of the expectation
    (Jensen): by about ``(e^v - 1) / (2 (2n - 2))`` for a similarity variance v, negligible for large n.
    """
    n = features_view1.shape[0]
    if n < 2 or features_view2.shape != features_view1.shape:
        raise ValueError("need two (n, k) feature batches of equal shape with n >= 2")
    features = torch.cat([features_view1, features_view2])
    logits = features @ features.T / temperature
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(logits.device)
    rows = torch.arange(2 * n, device=logits.device)
    positive_logits = logits[rows, positives]
    excluded = torch.eye(2 * n, dtype=torch.bool, device=logits.device)
    if not include_positive:
        excluded[rows, positives] = True
    denominator_size = 2 * n - 1 - (0 if include_positive else 1)
    log_partition = torch.logsumexp(logits.masked_fill(excluded, float("-inf")), dim=1) - np.log(denominator_size)
    return (log_partition - positive_logits).mean()


# ------------------------------------------------------------------------------------------ data mean and bias
def uncentred_view_covariances(
    data_mean: np.ndarray, data_covariance: np.ndarray, augmentation_covariance: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Second moments ``(E[x1 x2^T], E[x1 x1^T]) = (A + mu mu^T, A + B + mu mu^T)`` of views of non-zero-mean data.

    Both quartic landscapes are derived from *uncentred* second moments (``E[f1^T f2]``, ``E[(f1^T f2')^2]``
    and the alignment + variance loss's uncentred moment of the mean view never subtract a mean), so for an
    encoder without bias pass these as ``cross_view_covariance`` / ``view_covariance``. Consequence: the mean
    adds ``2 mu mu^T`` (spectral contrastive) to P, so a data mean *raises* the complete-collapse weight decay
    from ``2 lambda_max(A)`` to ``lambda_max(2 A + 2 mu mu^T)``, and what survives longest is a feature that
    is mostly a constant offset ``W mu`` - full rank in W, little information about the sample.
    """
    mean = np.asarray(data_mean, dtype=float).reshape(-1)
    cross_view, single_view = additive_augmentation_view_covariances(data_covariance, augmentation_covariance)
    if mean.shape[0] != cross_view.shape[0]:
        raise ValueError(f"data_mean has {mean.shape[0]} entries, covariances are {cross_view.shape}")
    outer = np.outer(mean, mean)
    return cross_view + outer, single_view + outer


@dataclass(frozen=True)
class BiasedPrediction:
    """Global minimum of a quartic landscape for an encoder ``f(x) = W x + bias`` (``predict_with_bias``).

    ``weight`` (k x d) and ``bias`` (k) are one minimiser (others: ``O W``, ``O bias``); ``representation_mean``
    is ``W mu + bias``; ``keeps_constant`` says whether the constant feature takes one of the k outputs;
    ``data_directions_kept`` counts the data directions that survive (the rank of W);
    ``extended`` is the prediction for the extended weight ``(W, m)`` acting on ``(x - mu, 1)``.
    """

    weight: np.ndarray
    bias: np.ndarray
    representation_mean: np.ndarray
    keeps_constant: bool
    data_directions_kept: int
    extended: LinearSSLPrediction


def biased_landscape(
    loss: str,
    data_covariance: np.ndarray,
    augmentation_covariance: np.ndarray,
    weight_decay: float = 0.0,
    bias_decay: float = 0.0,
) -> QuarticLandscape:
    """The landscape of ``f(x) = W x + bias`` as a quartic landscape in d + 1 dimensions (``loss``: "spectral"
    or "alignment_variance"; the data mean drops out).

    Derivation: write ``f(x) = W (x - mu) + m`` with ``m = W mu + bias``. For a free bias, ``(W, m)`` ranges over
    all of R^{k x (d+1)} and acts linearly on ``x_hat = (x - mu, 1)``, whose uncentred second moments are
    block-diagonal: ``E[x1_hat x2_hat^T] = diag(A, 1)`` and ``E[x1_hat x1_hat^T] = diag(A + B, 1)``. Both losses
    depend on the encoder only through these moments (``uncentred_view_covariances``), so they are the usual
    landscapes of the extended input, with weight decay ``gamma`` on W and ``bias_decay`` on m (decaying the
    bias is decaying m up to the shift ``W mu``; exact for ``bias_decay = 0``, the project's LARS setting, and
    for mu = 0). The constant coordinate is one more direction with cross-view moment 1 and single-view
    moment 1: P-entry 2 (spectral: 2·1; alignment + variance: 3·1 - 1), Q-entry 1 (both), so its whitened
    rate is ``2 - bias_decay``, and it is stored here as growth ``2 + gamma - bias_decay`` so that the
    landscape's scalar weight decay ``gamma`` gives it exactly ``bias_decay``. (Hence ``critical_weight_decay`` of
    this landscape means nothing: the constant's entry moves with gamma; the data directions' threshold is
    that of the bias-free landscape.)
    """
    builders = {"spectral": spectral_contrastive_landscape, "alignment_variance": alignment_variance_landscape}
    if loss not in builders:
        raise ValueError(f"loss: one of {', '.join(builders)} (InfoNCE: see unnormalised_infonce_loss), got {loss!r}")
    cross_view, single_view = additive_augmentation_view_covariances(data_covariance, augmentation_covariance)
    dim = cross_view.shape[0]

    def extend(matrix: np.ndarray) -> np.ndarray:
        return np.block([[matrix, np.zeros((dim, 1))], [np.zeros((1, dim)), np.ones((1, 1))]])

    base = builders[loss](None, weight_decay=weight_decay, cross_view_covariance=extend(cross_view),
                          view_covariance=extend(single_view))
    growth = base.growth.copy()
    growth[dim, dim] += weight_decay - bias_decay
    return QuarticLandscape(growth=growth, saturation=base.saturation, weight_decay=weight_decay)


def predict_with_bias(
    loss: str,
    data_mean: np.ndarray,
    data_covariance: np.ndarray,
    augmentation_covariance: np.ndarray,
    weight_decay: float = 0.0,
    output_dim: int | None = None,
    bias_decay: float = 0.0,
) -> BiasedPrediction:
    """Global minimum of the spectral contrastive or alignment + variance loss for ``f(x) = W x + bias``.

    From ``biased_landscape``: the data mean is irrelevant to W (the bias absorbs it: ``bias = m - W mu``);
    the representation acquires a constant component with ``||m||^2 = (2 - bias_decay) / 2`` (1 for an
    undecayed bias) whenever ``2 - bias_decay`` is among the k largest whitened rates. For additive noise the
    data rates are ``(2a_i - gamma) / (a_i + b_i) < 2`` (spectral) and ``(2a_i - b_i - gamma) / (a_i + b_i/2)
    < 2`` (alignment + variance), so an undecayed constant always wins a slot: **with k = d outputs a bias
    collapses the weakest surviving data direction**, and complete collapse (W = 0) leaves the constant.
    """
    dim = np.asarray(data_covariance).shape[0]
    output_dim = dim if output_dim is None else int(output_dim)
    extended = predict_stationary_solution(
        biased_landscape(loss, data_covariance, augmentation_covariance, weight_decay, bias_decay), output_dim)
    weight, mean = extended.weight[:, :dim], extended.weight[:, dim]
    data_mean = np.asarray(data_mean, dtype=float).reshape(-1)
    keeps_constant = bool(extended.survives[np.argmax(np.abs(extended.input_directions[dim]))])
    return BiasedPrediction(weight=weight, bias=mean - weight @ data_mean, representation_mean=mean,
                            keeps_constant=keeps_constant, data_directions_kept=extended.rank - int(keeps_constant),
                            extended=extended)


# -------------------------------------------------------------------------------------------- class imbalance
def long_tail_class_priors(num_classes: int = 10, imbalance_ratio: float = 10.0) -> np.ndarray:
    """Class frequencies ``pi_c ∝ ratio^(-c / (K - 1))``, c = 0..K-1: the profile of
    ``python -m adadim_dist.data write --imbalance-ratio R`` (head class R times the tail class), normalised."""
    if num_classes < 1 or not imbalance_ratio >= 1:
        raise ValueError(f"need num_classes >= 1 and imbalance_ratio >= 1, got {num_classes}, {imbalance_ratio}")
    weights = float(imbalance_ratio) ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    return weights / weights.sum()


def class_mixture_view_covariances(
    priors: np.ndarray,
    augmentation_variance: float,
    within_class_variance: float = 0.0,
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Uncentred ``(S, C)`` for class means plus noise: class c (frequency ``pi_c``) has mean ``e_c`` (orthonormal
    class means in R^dim, dim >= K), a sample is ``e_c + xi`` with ``xi ~ N(0, w I)`` shared by its two views,
    and each view adds its own ``eps_v ~ N(0, sigma^2 I)``:
    ``S = diag(pi) + w I``, ``C = S + sigma^2 I`` (zero rows of ``diag(pi)`` beyond K).

    Uncentred because the encoder has no bias (with a free bias, centre them and add the constant direction:
    ``biased_landscape``).
    """
    priors = np.asarray(priors, dtype=float)
    if priors.ndim != 1 or priors.min() < 0 or not np.isclose(priors.sum(), 1.0):
        raise ValueError("priors must be a probability vector")
    dim = priors.size if dim is None else int(dim)
    if dim < priors.size or augmentation_variance < 0 or within_class_variance < 0:
        raise ValueError("need dim >= number of classes and non-negative variances")
    cross_view = np.diag(np.pad(priors, (0, dim - priors.size))) + within_class_variance * np.eye(dim)
    return cross_view, cross_view + augmentation_variance * np.eye(dim)


def class_collapse_weight_decays(
    priors: np.ndarray,
    augmentation_variance: float = 0.1,
    within_class_variance: float = 0.0,
    loss: str = "spectral",
    temperature: float = 1.0,
) -> np.ndarray:
    """Weight decay at which each class's direction collapses, for the class mixture of
    ``class_mixture_view_covariances`` (orthonormal means): the eigenvalue ``p_c`` of P along ``e_c``.

    * spectral contrastive (P = 2S):        ``gamma_c = 2 (pi_c + w)``   - independent of the augmentation;
    * unnormalised InfoNCE (P = S / tau):   ``gamma_c = (pi_c + w) / tau``;
    * alignment + variance (P = 3S - C):    ``gamma_c = 2 (pi_c + w) - sigma^2``.

    So **the collapse order is the class-frequency order: tail classes first**, at a weight decay proportional to
    their frequency (spectral, w = 0: class c's direction survives iff ``2 pi_c > gamma``). For the long-tail
    profile of ratio 10 (``long_tail_class_priors(10, 10)``: pi = 0.245 ... 0.024) the spectral thresholds are
    0.489, 0.379, 0.293, 0.227, 0.176, 0.136, 0.105, 0.082, 0.063, 0.049, and 9, 7, 5, 4 and 2 class directions
    survive at gamma = 0.05, 0.1, 0.15, 0.2 and 0.3. Computed through ``predict_stationary_solution`` (not the
    formulas above), so the docstring's formulas are checked by the tests. A direction beyond the K class means
    (dim > K) has p = 2w (spectral) and collapses with the rarest class or before it.
    """
    cross_view, single_view = class_mixture_view_covariances(priors, augmentation_variance, within_class_variance)
    builders = {"spectral": spectral_contrastive_landscape, "alignment_variance": alignment_variance_landscape,
                "infonce": lambda *a, **k: infonce_landscape(*a, temperature=temperature, **k)}
    if loss not in builders:
        raise ValueError(f"loss: one of {', '.join(builders)}, got {loss!r}")
    growth = builders[loss](None, cross_view_covariance=cross_view, view_covariance=single_view).growth
    return np.diag(growth).copy()  # diagonal: P is diagonal in the class basis


def surviving_class_directions(
    priors: np.ndarray,
    weight_decay: float,
    augmentation_variance: float = 0.1,
    within_class_variance: float = 0.0,
    loss: str = "spectral",
    temperature: float = 1.0,
    output_dim: int | None = None,
) -> np.ndarray:
    """Boolean per class: does its mean direction survive at this weight decay (global minimum, k outputs)?

    ``predict_stationary_solution`` of the class-mixture landscape; the surviving whitened directions are
    coordinate axes (P and Q are diagonal), mapped back to classes. With ``output_dim`` = k < K the k largest
    whitened rates ``(p_c - gamma) / q_c`` win; for the spectral loss ``(2 pi_c + 2w - gamma) / (pi_c + w +
    sigma^2)`` increases with pi_c, so a rank limit also drops the tail classes first.
    """
    cross_view, single_view = class_mixture_view_covariances(priors, augmentation_variance, within_class_variance)
    builders = {"spectral": spectral_contrastive_landscape, "alignment_variance": alignment_variance_landscape,
                "infonce": lambda *a, **k: infonce_landscape(*a, temperature=temperature, **k)}
    landscape = builders[loss](None, weight_decay=weight_decay, cross_view_covariance=cross_view,
                               view_covariance=single_view)
    prediction = predict_stationary_solution(landscape, output_dim)
    kept = np.zeros(len(priors), dtype=bool)
    for column in np.flatnonzero(prediction.survives):
        kept[int(np.argmax(np.abs(prediction.input_directions[:, column])))] = True
    return kept


# --------------------------------------------------------------------------------------- near the thresholds
def singular_value_near_threshold(growth, saturation, weight_decay) -> np.ndarray:
    """The singular value of W* along one direction of the commuting case (eigenvalues p of P and q of Q;
    arrays broadcast): ``sqrt(max(p - gamma, 0) / (2 q^2))``.

    Near the threshold gamma -> p from below this is ``(p - gamma)^{1/2} / (sqrt(2) q)``: a continuous
    (second-order) transition with exponent ½ for the singular value ("strength" ``||W e_i||`` in the synthetic
    trainer), exponent 1 for the representation variance ``(p - gamma) / (2 q)`` along it and for the loss
    gain ``(p - gamma)^2 / (4 q^2)`` at exponent 2. The same holds for any control parameter that moves p
    linearly through gamma (e.g. the augmentation variance b in the alignment + variance loss, P = 2a - b,
    where q = a + b/2 also moves, but smoothly, so the exponent is still ½). The curvature of (L) along the
    direction at the minimum is ``4 (p - gamma)``: gradient descent relaxes at a rate that vanishes at the
    threshold (critical slowing down), so training near a threshold needs more steps.
    """
    gap = np.clip(np.asarray(growth, dtype=float) - np.asarray(weight_decay, dtype=float), 0.0, None)
    return np.sqrt(gap / 2.0) / np.asarray(saturation, dtype=float)
