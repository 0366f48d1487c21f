"""Estimators of dimensionality and information, as pure tensor functions (natural log, nats).

All functions take already-gathered (global) tensors: rows are samples, columns features.

- ``effective_rank``: RankMe (Garrido et al. 2023), exp of the entropy of the normalised singular values.
- ``renyi_entropy``: matrix-based Rényi α-order entropy (Sanchez Giraldo, Rao, Principe 2015) of the
  trace-normalised Gram matrix A = K / tr(K). Order 2 uses S₂(A) = −log ‖A‖_F² (no eigendecomposition,
  smooth gradients); other orders use the eigenvalues of A; order 1 is the von Neumann entropy.
- ``joint_entropy`` / ``mutual_information``: through the Hadamard product A∘B / tr(A∘B).
- ``uniformity`` / ``alignment``: Wang & Isola (2020).
"""

from __future__ import annotations

import math

import torch

KERNELS = ("cosine", "gaussian")
_TINY = 1e-12


def _check_matrix(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D (samples × features) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(x.shape)}")


def _check_order(order: float) -> None:
    if not isinstance(order, (int, float)) or not math.isfinite(order) or order <= 0:
        raise ValueError(f"order: must be a finite number > 0, got {order!r}")


def _check_same_rows(x: torch.Tensor, y: torch.Tensor, names: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{names}: batch sizes differ ({x.shape[0]} vs {y.shape[0]})")


def _nan_like(x: torch.Tensor) -> torch.Tensor:
    """NaN as a 0-d function of x: the decompositions raise on non-finite input, but a diverged step should
    reach the caller as a non-finite value (the worker stops or skips it), gradient path included."""
    return x.sum() * float("nan")


def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """exp(−Σ p_k log p_k) with p = σ / Σσ + ε over the singular values σ of z. 1 ≤ erank ≤ min(N, D)."""
    _check_matrix(z, "z")
    if not torch.isfinite(z).all():
        return _nan_like(z)
    sigma = torch.linalg.svdvals(z)
    p = sigma / (sigma.sum() + eps) + eps
    return torch.exp(-(p * torch.log(p)).sum())


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # A zero row has no direction; mapping it to one fixed unit vector makes all-zero input a set of identical
    # points (entropy 0) instead of a 0/0.
    norms = x.norm(dim=1, keepdim=True)
    fallback = torch.full_like(x, 1.0 / math.sqrt(x.shape[1]))
    return torch.where(norms > _TINY, x / norms.clamp_min(_TINY), fallback)


def gram_matrix(x: torch.Tensor, kernel: str = "cosine", sigma: float | None = None) -> torch.Tensor:
    """Kernel Gram matrix of the L2-normalised rows of x (unit diagonal, positive semi-definite).

    ``cosine``: K = X̂X̂ᵀ. ``gaussian``: K_ij = exp(−‖x̂_i − x̂_j‖² / (2σ²)); σ=None uses the median pairwise
    distance (computed without gradient, so the kernel width is a constant of the step).
    """
    _check_matrix(x, "x")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: must be one of {', '.join(KERNELS)}, got {kernel!r}")
    unit = _unit_rows(x)
    cos = unit @ unit.T
    if kernel == "cosine":
        return cos
    sq_dist = (2.0 - 2.0 * cos).clamp_min(0.0)
    if sigma is None:
        n = x.shape[0]
        off_diag = sq_dist.detach()[~torch.eye(n, dtype=torch.bool, device=x.device)]
        median = off_diag.sqrt().median() if off_diag.numel() else torch.tensor(1.0, dtype=x.dtype)
        width_sq = median.clamp_min(1e-3) ** 2
    else:
        if sigma <= 0:
            raise ValueError(f"sigma: must be > 0, got {sigma!r}")
        width_sq = torch.tensor(float(sigma) ** 2, dtype=x.dtype, device=x.device)
    return torch.exp(-sq_dist / (2.0 * width_sq))


def _normalise_trace(k: torch.Tensor) -> torch.Tensor:
    return k / torch.diagonal(k).sum().clamp_min(_TINY)


def matrix_entropy(a: torch.Tensor, order: float = 2.0) -> torch.Tensor:
    """S_order(A) of a trace-one PSD matrix A."""
    _check_order(order)
    if order == 2.0:
        return -torch.log((a * a).sum().clamp_min(_TINY))
    if not torch.isfinite(a).all():
        return _nan_like(a)
    eigenvalues = torch.linalg.eigvalsh(a).clamp_min(0.0)
    if order == 1.0:
        nonzero = eigenvalues > _TINY
        return -(eigenvalues[nonzero] * torch.log(eigenvalues[nonzero])).sum()
    return torch.log((eigenvalues**order).sum().clamp_min(_TINY)) / (1.0 - order)


def renyi_entropy(
    x: torch.Tensor, order: float = 2.0, kernel: str = "cosine", sigma: float | None = None
) -> torch.Tensor:
    """Matrix-based Rényi entropy of the rows of x. N orthogonal rows → log N; N identical rows → 0."""
    _check_order(order)
    return matrix_entropy(_normalise_trace(gram_matrix(x, kernel, sigma)), order)


def joint_entropy(
    x: torch.Tensor, y: torch.Tensor, order: float = 2.0, kernel: str = "cosine", sigma: float | None = None
) -> torch.Tensor:
    """S_order(A∘B / tr(A∘B)) where A, B are the Gram matrices of x and y (same samples, any widths)."""
    _check_matrix(x, "x")
    _check_matrix(y, "y")
    _check_same_rows(x, y, "x, y")
    _check_order(order)
    hadamard = gram_matrix(x, kernel, sigma) * gram_matrix(y, kernel, sigma)
    return matrix_entropy(_normalise_trace(hadamard), order)


def information_terms(
    x: torch.Tensor, y: torch.Tensor, order: float = 2.0, kernel: str = "cosine", sigma: float | None = None
) -> dict[str, torch.Tensor]:
    """H(x), H(y), H(x, y) and I(x; y) = H(x) + H(y) − H(x, y), sharing one Gram matrix per input."""
    _check_matrix(x, "x")
    _check_matrix(y, "y")
    _check_same_rows(x, y, "x, y")
    _check_order(order)
    k_x = gram_matrix(x, kernel, sigma)
    k_y = gram_matrix(y, kernel, sigma)
    h_x = matrix_entropy(_normalise_trace(k_x), order)
    h_y = matrix_entropy(_normalise_trace(k_y), order)
    h_xy = matrix_entropy(_normalise_trace(k_x * k_y), order)
    return {"h_x": h_x, "h_y": h_y, "h_xy": h_xy, "mi": h_x + h_y - h_xy}


def mutual_information(
    x: torch.Tensor, y: torch.Tensor, order: float = 2.0, kernel: str = "cosine", sigma: float | None = None
) -> torch.Tensor:
    """Matrix-based Rényi mutual information I(x; y). Symmetric, 0 ≤ I ≤ min(H(x), H(y))."""
    return information_terms(x, y, order, kernel, sigma)["mi"]


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log mean_{i≠j} exp(−t‖ẑ_i − ẑ_j‖²) over L2-normalised rows; lower is more uniform."""
    _check_matrix(z, "z")
    if z.shape[0] < 2:
        raise ValueError(f"z: uniformity needs at least 2 rows, got {z.shape[0]}")
    unit = _unit_rows(z)
    sq_dist = (2.0 - 2.0 * (unit @ unit.T)).clamp_min(0.0)
    n = z.shape[0]
    off_diag = sq_dist[~torch.eye(n, dtype=torch.bool, device=z.device)]
    return torch.logsumexp(-t * off_diag, dim=0) - math.log(off_diag.numel())


def alignment(z_a: torch.Tensor, z_b: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """mean ‖ẑ_a − ẑ_b‖^power over positive pairs of L2-normalised rows; lower is better aligned."""
    _check_matrix(z_a, "z_a")
    _check_matrix(z_b, "z_b")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a, z_b: shapes differ ({tuple(z_a.shape)} vs {tuple(z_b.shape)})")
    return (_unit_rows(z_a) - _unit_rows(z_b)).norm(dim=1).pow(power).mean()
