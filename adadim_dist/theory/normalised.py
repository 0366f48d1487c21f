"""The normalised (cosine) InfoNCE of a linear encoder: derived facts and a numerical landscape (torch).

The project trains NT-Xent on L2-normalised embeddings (``objectives.losses.nt_xent_loss``, temperature tau).
``linear_ssl.infonce_landscape`` solves the *unnormalised* loss; the normalised one has no closed-form
minimum that we could derive, so this module states what does follow in closed form and computes the rest.

Derived (for ``f(x) = W x`` and any view distribution):

1. **Scale invariance, so no weight-decay threshold.** ``cos(cW u, cW v) = cos(W u, W v)`` for c > 0, so
   ``L(cW) = L(W)``; differentiating at c = 1 gives ``<grad L(W), W> = 0``. With weight decay ``gamma ||W||^2``
   there is no minimiser for any gamma > 0 (the infimum is approached as W -> 0 along the best shape), and under
   gradient flow ``d||W||^2/dt = -4 gamma ||W||^2`` whatever L is: weight decay only shrinks the scale
   (exponentially), and which directions survive is decided by L on the sphere ``||W|| = 1`` - by the
   temperature, the augmentation and the batch, not by gamma. (Discrete SGD adds ``lr^2 ||grad L||^2`` to the
   norm per step, the known equilibrium of scale-invariant weights; that sets the scale, not the shape.)
2. **High-temperature expansion.** With population negatives and zero-mean symmetric views,
   ``E cos(z1, z2') = 0`` and ``E cos^2(z1, z2') = Tr[M^2]`` with ``M = E[u u^T]``, ``u = z / ||z||``, so

       L = -E[cos(z1, z2)] / tau + Tr[M^2] / (2 tau^2) + O(tau^-3):

   alignment (rewarding the directions the two views agree on) at order 1/tau, uniformity (Tr M^2 >= 1/k,
   smallest for an isotropic M) only at 1/tau^2. A larger temperature weights alignment more, hence
   favours collapse onto the best-aligned directions: the temperature plays the role that weight decay plays
   in the unnormalised landscape.

   For the two-block problem below (k1 clean directions, k2 augmented ones, all of data variance a, views
   differing by noise of variance b on the augmented block; W = diag(1, ..., 1, r, ..., r)) both terms can be
   expanded to O(r^2) around the collapsed shape r = 0 (``high_temperature_collapse_threshold``), giving a
   closed-form threshold ``b* = a / (k1 tau - 1)`` for ``k1 tau > 1``.

Numerical landscape (``expected_ntxent``): the expectation over Gaussian view batches of the project's own
mini-batch NT-Xent (batch size and temperature as trained), estimated on a fixed set of batches (common random
numbers, so that differences between weights are precise). For the two-block problem of the phase diagram
(``clean_dims`` un-augmented directions and ``augmented_dims`` directions with augmentation variance b, all of
data variance a), symmetry reduces the shape to one number, the ratio r of the augmented directions' strength to
the clean ones' (``block_ratio_landscape``), assuming the optimum treats the directions of a block alike.

3. **Square-root onset (Landau).** On a fixed set of batches the landscape is a smooth function of u = r^2
   (``||W x||^2 = ||x_clean||^2 + u ||x_aug||^2`` and the clean part is non-zero), so near the collapsed shape
   ``L = L0 + A(b) u + B(b) u^2 + C(b) u^3 + ...`` (``landau_coefficients``). The block collapses where A >= 0,
   so the threshold b* is the zero of A; with A linear in b near b* and B > 0 the optimum below it is
   ``r* = sqrt(-A / (2B)) ~ sqrt(A'(b*) (b* - b) / (2 B))``: exponent 1/2 (``landau_onset_ratio``). The
   higher terms are large (at tau = 0.2, B ~ 480 and C ~ -1.6e5), so the expansion holds only for r well
   below 0.05 and A must be read from small r: a two-point curvature ``(L(eps) - L(0)) / eps^2`` is A + B eps^2 and
   puts b* too high by B eps^2 / A'.
"""

from __future__ import annotations

import numpy as np
import torch

from ..objectives.losses import nt_xent_loss
from .synthetic import GaussianViews


def _batches(views: GaussianViews, batch_size: int, batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [views.sample(batch_size, generator) for _ in range(batches)]


def expected_ntxent(
    weights,
    views: GaussianViews,
    temperature: float = 0.2,
    batch_size: int = 256,
    batches: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """Expected project NT-Xent (normalised, ``temperature``, batches of ``batch_size`` pairs) of each weight in
    ``weights`` (a (k, d) array or a sequence of them), estimated on the same ``batches`` batches of views."""
    stacked = [np.asarray(w, dtype=float) for w in (weights if isinstance(weights, (list, tuple)) else [weights])]
    samples = _batches(views, batch_size, batches, seed)
    values = []
    with torch.no_grad():
        for weight in stacked:
            w = torch.from_numpy(weight)
            values.append(np.mean([nt_xent_loss(v1 @ w.T, v2 @ w.T, temperature).item() for v1, v2 in samples]))
    return np.array(values)


def two_block_views(augmentation_variance: float, clean_dims: int = 4, augmented_dims: int = 4,
                    data_variance: float = 1.0) -> GaussianViews:
    """``clean_dims`` directions without augmentation, then ``augmented_dims`` with variance b; all of variance a."""
    dims = clean_dims + augmented_dims
    noise = (0.0,) * clean_dims + (float(augmentation_variance),) * augmented_dims
    return GaussianViews((data_variance,) * dims, noise)


def block_ratio_landscape(
    augmentation_variance: float,
    ratios: np.ndarray,
    clean_dims: int = 4,
    augmented_dims: int = 4,
    data_variance: float = 1.0,
    **estimate,
) -> np.ndarray:
    """Expected NT-Xent of ``W = diag(1, ..., 1, r, ..., r)`` for each r in ``ratios`` (``estimate``: the keywords of
    ``expected_ntxent``). By scale invariance this is the landscape of every W of that shape."""
    views = two_block_views(augmentation_variance, clean_dims, augmented_dims, data_variance)
    weights = [np.diag([1.0] * clean_dims + [float(r)] * augmented_dims) for r in np.asarray(ratios, dtype=float)]
    return expected_ntxent(weights, views, **estimate)


def optimal_block_ratio(augmentation_variance: float, max_ratio: float = 1.5, grid: int = 31, **kwargs) -> float:
    """The ratio r* minimising ``block_ratio_landscape``: a grid on [0, max_ratio], refined by golden-section
    search in the bracketing cells. 0 means the augmented block collapses (relative to the clean one)."""
    ratios = np.linspace(0.0, max_ratio, grid)
    losses = block_ratio_landscape(augmentation_variance, ratios, **kwargs)
    best = int(np.argmin(losses))
    low, high = ratios[max(best - 1, 0)], ratios[min(best + 1, grid - 1)]
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    loss = lambda r: float(block_ratio_landscape(augmentation_variance, [r], **kwargs)[0])  # noqa: E731
    for _ in range(20):
        left, right = high - golden * (high - low), low + golden * (high - low)
        if loss(left) <= loss(right):
            high = right
        else:
            low = left
    candidate = 0.5 * (low + high)
    return 0.0 if loss(0.0) <= loss(candidate) else float(candidate)


def landau_coefficients(augmentation_variance: float, max_ratio: float = 0.012, points: int = 13,
                        **kwargs) -> tuple[float, float, float]:
    """(A, B, C) of ``L(r) = L0 + A u + B u^2 + C u^3`` with u = r^2 (module docstring, item 3): a cubic
    least-squares fit in u of the block landscape at ``points`` ratios in [0, ``max_ratio``]. A much larger
    ``max_ratio`` lets the neglected higher terms bias A (at tau = 0.2, r up to 0.04 gave a quarter of A)."""
    ratios = np.linspace(0.0, max_ratio, points)
    c, b, a, _ = np.polyfit(ratios**2, block_ratio_landscape(augmentation_variance, ratios, **kwargs), 3)
    return float(a), float(b), float(c)


def collapse_curvature(augmentation_variance: float, **kwargs) -> float:
    """A, the coefficient of r^2 at the collapsed shape r = 0 (``landau_coefficients``; L is even in r).
    Positive: the collapsed augmented block is a local minimum; negative: it is unstable and grows."""
    return landau_coefficients(augmentation_variance, **kwargs)[0]


def landau_onset_ratio(augmentation_variance: float, **kwargs) -> float:
    """The optimal ratio the Landau expansion predicts, ``sqrt(-A / (2B))`` (0 where A >= 0): the square-root
    onset below the threshold, accurate while r* is well inside the expansion's range (at tau = 0.2, r well
    below 0.05)."""
    a, b, _ = landau_coefficients(augmentation_variance, **kwargs)
    return float(np.sqrt(-a / (2.0 * b))) if a < 0 < b else 0.0


def collapse_threshold(low: float = 0.0, high: float = 6.0, tolerance: float = 1e-3, **kwargs) -> float:
    """The augmentation variance b* at which the collapsed augmented block becomes stable (the sign change of
    ``collapse_curvature``), by bisection on [low, high]; the transition's location if it is continuous."""
    if collapse_curvature(low, **kwargs) >= 0 or collapse_curvature(high, **kwargs) <= 0:
        raise ValueError(f"no sign change of the collapse curvature on [{low}, {high}]")
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if collapse_curvature(middle, **kwargs) < 0:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def high_temperature_collapse_threshold(temperature: float, clean_dims: int = 4, data_variance: float = 1.0) -> float:
    """Augmentation variance above which the augmented block collapses, from the high-temperature expansion
    (module docstring, item 2): ``b* = a / (k1 tau - 1)``; ``inf`` where ``k1 tau <= 1`` (no threshold at this order).

    Derivation (population negatives, x ~ N(0, a I_k1) the clean block, y_v = xi + eps_v with xi ~ N(0, a I_k2),
    eps_v ~ N(0, b I_k2), z_v = (x, r y_v)). Alignment: ``cos(z1, z2) = 1 - r^2 ||y1 - y2||^2 / (2 ||x||^2) + O(r^4)``
    and ``E||y1 - y2||^2 = 2 k2 b``, ``E ||x||^-2 = 1 / (a (k1 - 2))`` (k1 > 2), so ``-E cos / tau`` gains
    ``r^2 k2 b / (tau a (k1 - 2))``. Uniformity: ``M_clean = I / k1 - r^2 k2 (a + b) / (k1 a (k1 - 2)) I + O(r^4)`` and
    ``M_aug = O(r^2)``, so ``Tr M^2 / (2 tau^2)`` changes by ``-r^2 k2 (a + b) / (tau^2 k1 a (k1 - 2))``. The r^2
    coefficient ``k2 / (tau a (k1 - 2)) [b - (a + b) / (tau k1)]`` changes sign at ``b* = a / (k1 tau - 1)``.
    It neglects O(tau^-3) and the finite batch; ``collapse_threshold`` computes b* without either approximation.
    """
    if not temperature > 0 or clean_dims < 3:
        raise ValueError("need temperature > 0 and clean_dims >= 3 (E ||x||^-2 is infinite below)")
    excess = clean_dims * temperature - 1.0
    return float("inf") if excess <= 0 else data_variance / excess
