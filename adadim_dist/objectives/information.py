"""Estimators of dimensionality and information, as pure tensor functions (natural log, nats).

Rows are samples, columns features. The plain functions take already-gathered (global) tensors. The
``*_sharded`` ones take this worker's local rows, the gathered tensors where columns of a Gram block are
needed, and an ``all_reduce`` (sum over workers, identity on one process), and return the global value on
every worker at O(n·N·d + d²) per worker instead of O(N²·d):

- ``effective_rank_sharded``: eigenvalues of the all-reduced d×d matrix ZᵀZ (the squared singular values),
  or of the N×N matrix ZZᵀ of the gathered rows while that is cheaper (N small against d).
- ``information_terms_sharded``: order 2 only. S₂ needs ‖K‖_F² and tr(K), sums over row blocks of K. Other
  orders need the spectrum of the N×N matrix and the median-heuristic kernel width a statistic of all of
  it: those keep the gathered estimators.
- ``uniformity_sharded`` / ``alignment_sharded``: sums over the local rows' block, all-reduced.

- ``effective_rank``: RankMe (Garrido et al. 2023), exp of the entropy of the normalised singular values.
- ``renyi_entropy``: matrix-based Rényi α-order entropy (Sanchez Giraldo, Rao, Principe 2015) of the
  trace-normalised Gram matrix A = K / tr(K). Order 2 uses S₂(A) = −log ‖A‖_F² (no eigendecomposition,
  smooth gradients); other orders use the eigenvalues of A; order 1 is the von Neumann entropy.
- ``joint_entropy`` / ``mutual_information``: through the Hadamard product A∘B / tr(A∘B).
- ``uniformity`` / ``alignment``: Wang & Isola (2020).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

AllReduce = Callable[[torch.Tensor], torch.Tensor]

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
        width_sq = _fixed_width_sq(sigma, x)
    return torch.exp(-sq_dist / (2.0 * width_sq))


def _fixed_width_sq(sigma: float, like: torch.Tensor) -> torch.Tensor:
    if sigma <= 0:
        raise ValueError(f"sigma: must be > 0, got {sigma!r}")
    return torch.tensor(float(sigma) ** 2, dtype=like.dtype, device=like.device)


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


# ------------------------------------------------------------------------------------------------ sharded form
def _check_row_offset(rows: torch.Tensor, columns: torch.Tensor, row_offset: int) -> None:
    if not isinstance(row_offset, int) or not 0 <= row_offset <= columns.shape[0] - rows.shape[0]:
        raise ValueError(f"row_offset: must be in [0, {columns.shape[0] - rows.shape[0]}] for {rows.shape[0]} "
                         f"local of {columns.shape[0]} rows, got {row_offset!r}")


def effective_rank_from_gram(gram: torch.Tensor, shape: tuple[int, int], eps: float = 1e-7) -> torch.Tensor:
    """``effective_rank`` of an N×d matrix Z of the given ``shape`` from ZᵀZ (d×d) or ZZᵀ (N×N) alone: their
    largest min(N, d) eigenvalues are the squared singular values of Z. Without gradient."""
    with torch.no_grad():
        if not torch.isfinite(gram).all():
            return gram.new_tensor(float("nan"))
        eigenvalues = torch.linalg.eigvalsh(gram)  # ascending
        # Eigenvalues of a null direction are rounding noise of size ~size·eps·λ_max, whose square root would
        # be a spurious singular value of ~1e-8·σ_max (float64) varying with the summation order: they are 0.
        tolerance = gram.shape[0] * torch.finfo(eigenvalues.dtype).eps * eigenvalues[-1].clamp_min(0.0)
        eigenvalues = torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))
        # Keeping exactly min(N, d) values, as svdvals does, keeps the ε in p_k summed over as many terms.
        sigma = eigenvalues[-min(shape) :].sqrt()
        p = sigma / (sigma.sum() + eps) + eps
        return torch.exp(-(p * torch.log(p)).sum())


def effective_rank_sharded(
    z: torch.Tensor, z_global: torch.Tensor, all_reduce: AllReduce, eps: float = 1e-7
) -> torch.Tensor:
    """``effective_rank(z_global)`` on every worker, from the eigenvalues of whichever Gram matrix is cheaper:
    the d×d ZᵀZ, summed over workers' rows (O(n·d² + d³) per worker, independent of the number of workers),
    or, while the global batch is small against d, the N×N ZZᵀ of the gathered rows (O(N²·d + N³), no
    collective). Both in float64: squaring the singular values squares the condition number. The choice
    depends on shapes only, so every worker makes the same collective calls. Without gradient."""
    _check_matrix(z, "z")
    _check_matrix(z_global, "z_global")
    num_global, dim = z_global.shape
    with torch.no_grad():
        if _row_gram_is_cheaper(num_global, z.shape[0], dim):
            rows = z_global.detach().to(torch.float64)
            return effective_rank_from_gram(rows @ rows.T, (num_global, dim), eps)
        local = z.detach().to(torch.float64)
        return effective_rank_from_gram(all_reduce(local.T @ local), (num_global, dim), eps)


def _row_gram_is_cheaper(num_global: int, num_local: int, dim: int) -> bool:
    # Flops of forming each Gram matrix plus its tridiagonalisation (4/3·size³, the bulk of eigvalsh).
    row_gram = 2 * num_global**2 * dim + 4 * num_global**3 / 3
    feature_gram = 2 * num_local * dim**2 + 4 * dim**3 / 3
    return row_gram < feature_gram


def gram_block(
    rows: torch.Tensor, columns: torch.Tensor, kernel: str = "cosine", sigma: float | None = None
) -> torch.Tensor:
    """The rows × columns block of the Gram matrix of L2-normalised samples (``gram_matrix(x)`` is
    ``gram_block(x, x)``). The Gaussian kernel needs a fixed ``sigma`` here: the median heuristic is a
    statistic of the whole matrix."""
    _check_matrix(rows, "rows")
    _check_matrix(columns, "columns")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: must be one of {', '.join(KERNELS)}, got {kernel!r}")
    cos = _unit_rows(rows) @ _unit_rows(columns).T
    if kernel == "cosine":
        return cos
    if sigma is None:
        raise ValueError("sigma: a Gram block needs a fixed Gaussian width (the median heuristic sees all pairs)")
    sq_dist = (2.0 - 2.0 * cos).clamp_min(0.0)
    return torch.exp(-sq_dist / (2.0 * _fixed_width_sq(sigma, rows)))


def renyi2_block_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    x_global: torch.Tensor,
    y_global: torch.Tensor,
    row_offset: int,
    kernel: str = "cosine",
    sigma: float | None = None,
) -> torch.Tensor:
    """This worker's share of the six sums behind order-2 H(x), H(y) and H(x, y): over the block of its rows
    (at ``row_offset`` in the gathered batch) against all columns, (tr K_x, ‖K_x‖², tr K_y, ‖K_y‖²,
    tr K_x∘K_y, ‖K_x∘K_y‖²). Summed over workers they are the sums over the whole N×N matrices."""
    _check_matrix(x, "x")
    _check_matrix(y, "y")
    _check_same_rows(x, y, "x, y")
    _check_same_rows(x_global, y_global, "x_global, y_global")
    _check_row_offset(x, x_global, row_offset)
    k_x = gram_block(x, x_global, kernel, sigma)
    k_y = gram_block(y, y_global, kernel, sigma)
    k_xy = k_x * k_y
    # Local row i is global sample row_offset + i: its diagonal entry sits at column row_offset + i.
    return torch.stack([
        torch.diagonal(k_x, offset=row_offset).sum(), (k_x * k_x).sum(),
        torch.diagonal(k_y, offset=row_offset).sum(), (k_y * k_y).sum(),
        torch.diagonal(k_xy, offset=row_offset).sum(), (k_xy * k_xy).sum(),
    ])


def renyi2_information_terms(sums: torch.Tensor) -> dict[str, torch.Tensor]:
    """H(x), H(y), H(x, y), I(x; y) of order 2 from the six whole-matrix sums of ``renyi2_block_sums``:
    S₂(K / tr K) = −log(‖K‖_F² / tr(K)²)."""
    if sums.shape != (6,):
        raise ValueError(f"sums: expected the 6 sums of renyi2_block_sums, got shape {tuple(sums.shape)}")

    def entropy(trace: torch.Tensor, sq_norm: torch.Tensor) -> torch.Tensor:
        return -torch.log((sq_norm / trace.clamp_min(_TINY) ** 2).clamp_min(_TINY))

    h_x, h_y, h_xy = entropy(sums[0], sums[1]), entropy(sums[2], sums[3]), entropy(sums[4], sums[5])
    return {"h_x": h_x, "h_y": h_y, "h_xy": h_xy, "mi": h_x + h_y - h_xy}


def information_terms_sharded(
    views: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    row_offset: int,
    all_reduce: AllReduce,
    kernel: str = "cosine",
    sigma: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Order-2 ``information_terms`` of the gathered batch, for each view's (x, y, x_global, y_global), from
    this worker's row block, on every worker; every view's sums share one ``all_reduce``. The gradient reaches
    every worker's rows through ``all_reduce`` and the gather behind ``x_global``."""
    sums = all_reduce(renyi2_local_sums(views, row_offset, kernel, sigma))
    return [renyi2_information_terms(view_sums) for view_sums in sums.unbind(0)]


def renyi2_local_sums(
    views: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    row_offset: int,
    kernel: str = "cosine",
    sigma: float | None = None,
) -> torch.Tensor:
    """This worker's ``renyi2_block_sums`` of each view's (x, y, x_global, y_global), stacked (views × 6): what
    ``information_terms_sharded`` all-reduces, for a caller that reduces it together with other sums."""
    return torch.stack([renyi2_block_sums(x, y, x_global, y_global, row_offset, kernel, sigma)
                        for x, y, x_global, y_global in views])


def uniformity_sharded(
    z: torch.Tensor, z_global: torch.Tensor, row_offset: int, all_reduce: AllReduce, t: float = 2.0
) -> torch.Tensor:
    """``uniformity(z_global)`` from this worker's rows against all rows; the exponentials are summed, not
    log-sum-exp'd, across workers: each lies in [e^(−4t), 1] (squared distances of unit vectors are ≤ 4), so
    nothing underflows for t ≤ 20 in float32."""
    _check_matrix(z, "z")
    _check_matrix(z_global, "z_global")
    num_global = z_global.shape[0]
    if num_global < 2:
        raise ValueError(f"z_global: uniformity needs at least 2 rows, got {num_global}")
    _check_row_offset(z, z_global, row_offset)
    sq_dist = (2.0 - 2.0 * (_unit_rows(z) @ _unit_rows(z_global).T)).clamp_min(0.0)
    rows = torch.arange(z.shape[0], device=z.device)
    self_pairs = torch.zeros_like(sq_dist, dtype=torch.bool)
    self_pairs[rows, rows + row_offset] = True
    total = all_reduce(torch.exp(-t * sq_dist).masked_fill(self_pairs, 0.0).sum())
    return torch.log(total) - math.log(num_global * (num_global - 1))


def alignment_sharded(
    z_a: torch.Tensor, z_b: torch.Tensor, all_reduce: AllReduce, num_global: int, power: float = 2.0
) -> torch.Tensor:
    """``alignment`` over all ``num_global`` positive pairs from this worker's pairs (an all-reduced sum)."""
    _check_matrix(z_a, "z_a")
    _check_matrix(z_b, "z_b")
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a, z_b: shapes differ ({tuple(z_a.shape)} vs {tuple(z_b.shape)})")
    return all_reduce((_unit_rows(z_a) - _unit_rows(z_b)).norm(dim=1).pow(power).sum()) / num_global
