"""Self-supervised losses as pure tensor functions.

Batch statistics (variance, covariance, cross-correlation, NT-Xent negatives) must see the whole global batch.
Two forms compute them:

- replicated (``vicreg_terms``, ``barlow_twins_loss``, ``nt_xent_loss``): pass gathered tensors; every worker
  computes the whole objective, O(N²·D) per worker for NT-Xent and O(N·D²) for the D×D statistics.
- sharded (``*_sharded``): every worker passes its local rows and an ``all_reduce`` (sum over workers,
  autograd-aware, identity on one process). The D×D statistics come from all-reduced sums (given the gathered
  rows and N ≤ D, from row-Gram blocks instead: ``covariance_from_row_gram``),
  NT-Xent takes the local rows against the gathered columns: O(n·D² + n·N·D) per worker. Each returns this
  worker's share: averaged over workers (as DDP averages gradients) it gives the global-batch value and gradient.
  The D×D statistics also come split in two (``*_local_sums``, ``*_from_sums``), so that a caller can
  reduce them together with other sums in one collective (``all_reduce_together``).

Per-pair terms (VICReg invariance) are exact on local tensors, because averaging the per-worker means over
equal-sized shards gives the global mean.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor, names: str = "z_a, z_b") -> None:
    for name, z in zip(names.split(", "), (z_a, z_b)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{name}: expected a 2-D (batch × dim) tensor, got {shape}")
    if z_a.shape != z_b.shape:
        raise ValueError(f"{names}: shapes differ ({tuple(z_a.shape)} vs {tuple(z_b.shape)})")


def invariance_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the two views (VICReg's invariance term)."""
    _check_pair(z_a, z_b)
    return F.mse_loss(z_a, z_b)


def variance_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Hinge keeping the standard deviation of every dimension above 1, over the batch."""
    if z.shape[0] < 2:
        raise ValueError(f"z: variance needs at least 2 samples, got {z.shape[0]}")
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances, divided by the dimension."""
    n, d = z.shape
    if n < 2:
        raise ValueError(f"z: covariance needs at least 2 samples, got {n}")
    centred = z - z.mean(dim=0)
    cov = (centred.T @ centred) / (n - 1)
    off_diag = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diag.pow(2).sum() / d


def vicreg_terms(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    z_a_global: torch.Tensor | None = None,
    z_b_global: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted VICReg terms: invariance on the local pairs, variance and covariance on the global batch."""
    _check_pair(z_a, z_b)
    z_a_global = z_a if z_a_global is None else z_a_global
    z_b_global = z_b if z_b_global is None else z_b_global
    _check_pair(z_a_global, z_b_global, "z_a_global, z_b_global")
    return {
        "invariance": invariance_loss(z_a, z_b),
        "variance": variance_loss(z_a_global) + variance_loss(z_b_global),
        "covariance": covariance_loss(z_a_global) + covariance_loss(z_b_global),
    }


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    z_a_global: torch.Tensor | None = None,
    z_b_global: torch.Tensor | None = None,
) -> torch.Tensor:
    """VICReg (Bardes et al. 2022): λ·invariance + μ·variance + ν·covariance."""
    terms = vicreg_terms(z_a, z_b, z_a_global, z_b_global)
    return (
        invariance_weight * terms["invariance"]
        + variance_weight * terms["variance"]
        + covariance_weight * terms["covariance"]
    )


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambda_offdiag: float = 5e-3) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021) on the (global) batch: cross-correlation driven to the identity."""
    _check_pair(z_a, z_b)
    n = z_a.shape[0]
    if n < 2:
        raise ValueError(f"z_a: Barlow Twins needs at least 2 samples, got {n}")
    # Batch-norm statistics (biased std), as in the paper, so identical whitened views give exactly 0.
    norm_a = (z_a - z_a.mean(0)) / (z_a.std(0, correction=0) + 1e-5)
    norm_b = (z_b - z_b.mean(0)) / (z_b.std(0, correction=0) + 1e-5)
    corr = norm_a.T @ norm_b / n
    return _barlow_twins_from_correlation(corr, lambda_offdiag)


def _barlow_twins_from_correlation(corr: torch.Tensor, lambda_offdiag: float) -> torch.Tensor:
    on_diag = (torch.diagonal(corr) - 1.0).pow(2).sum()
    off_diag = (corr - torch.diag_embed(torch.diagonal(corr))).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


def nt_xent_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent / InfoNCE (SimCLR) over a (global) batch of N pairs: each of the 2N samples has its other view
    as positive and the remaining 2N − 2 samples as negatives."""
    _check_pair(z_a, z_b)
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature!r}")
    n = z_a.shape[0]
    z = F.normalize(torch.cat([z_a, z_b]), dim=1)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


# ------------------------------------------------------------------------------------------------ sharded form
def _check_global_rows(num_global: int, num_local: int, needed: int = 2) -> None:
    if not isinstance(num_global, int) or num_global < max(needed, num_local):
        raise ValueError(
            f"num_global: must be an int >= max({needed}, local batch {num_local}), got {num_global!r}"
        )


def all_reduce_together(all_reduce: AllReduce, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[all_reduce(t) for t in tensors]`` in one collective: flattened, concatenated, reduced once and split
    back (tensors of one dtype share it; a second dtype gets its own). A CPU step's small collectives cost
    their latency, not their size (BENCHMARKS.md, "Service against a plain loop"); the backward is one
    collective too."""
    reduced: list[torch.Tensor | None] = [None] * len(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        indices = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = all_reduce(torch.cat([tensors[i].reshape(-1) for i in indices]))
        for i, part in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            reduced[i] = part.view(tensors[i].shape)
    return reduced


def _global_means(views: torch.Tensor, all_reduce: AllReduce, num_global: int) -> torch.Tensor:
    """views × D means over the global batch from this worker's views × n × D rows (one all-reduce). A caller
    that holds the gathered rows takes their mean instead, without a collective."""
    return all_reduce(views.sum(dim=1)) / num_global


def covariance_from_row_gram(num_global: int, dim: int) -> bool:
    """Whether the sharded VICReg covariance (and Barlow Twins' cross-correlation, ``barlow_twins_local_sums``)
    comes from blocks of the N×N row Gram matrix (O(n·N·D) per worker, one number per view to sum) rather than
    from the D×D covariance (O(n·D²), D² numbers per view to sum):
    ‖C‖²_F = ‖SᵀS‖²_F = ‖SSᵀ‖²_F for the centred, scaled rows S. Fewer flops while N ≤ D, and at
    D = 512 the 2 MiB all-reduce and its backward took ~9 ms of a 2-worker CPU step (profiled; BENCHMARKS.md,
    "Service against a plain loop"). Its
    off-diagonal sum is ‖C‖²_F less the squared variances, a difference that cancels little while N ≤ D
    (the off-diagonal mass, ~D²/N, is at least the diagonal's, ~D)."""
    return num_global <= dim


def vicreg_local_sums(z_a: torch.Tensor, z_b: torch.Tensor, means: torch.Tensor, num_global: int,
                      z_a_global: torch.Tensor | None = None,
                      z_b_global: torch.Tensor | None = None) -> torch.Tensor:
    """This worker's share of the sums behind VICReg's variance and covariance of the global batch, as one flat
    tensor of its rows centred on the global ``means`` (2 × D) and scaled by 1/√(N − 1): [2·D squares | 2·D·D
    cross products], or, given the gathered rows and ``covariance_from_row_gram``, [2·D squares | each view's
    ‖s·Sᵀ‖²_F] for its rows s against all rows S. Centring on the means first (two passes) keeps float32's
    precision: the one-pass Σzzᵀ − N·μμᵀ cancels catastrophically when the mean is large against the spread."""
    _check_pair(z_a, z_b)
    _check_global_rows(num_global, z_a.shape[0])
    # Both views batched: the covariance work is the part of the sharded form that does not shrink with W. The
    # variances are their own 2×D sum, not the covariances' diagonal, whose indexing and zero-filled gradient
    # would be extra passes over D×D tensors.
    scale = math.sqrt(num_global - 1)
    scaled = (torch.stack([z_a, z_b]) - means[:, None, :]) / scale
    squares = (scaled * scaled).sum(dim=1).reshape(-1)
    if z_a_global is not None and z_b_global is not None and covariance_from_row_gram(*z_a_global.shape):
        scaled_global = (torch.stack([z_a_global, z_b_global]) - means[:, None, :]) / scale
        blocks = torch.bmm(scaled, scaled_global.transpose(1, 2))  # 2 × n × N
        return torch.cat([squares, (blocks * blocks).sum(dim=(1, 2))])
    return torch.cat([squares, torch.bmm(scaled.transpose(1, 2), scaled).reshape(-1)])


def vicreg_terms_from_sums(z_a: torch.Tensor, z_b: torch.Tensor, sums: torch.Tensor) -> dict[str, torch.Tensor]:
    """This worker's unweighted VICReg terms: invariance on its pairs, variance and covariance from
    ``vicreg_local_sums`` (either form) summed over workers."""
    d = z_a.shape[1]
    variances, covariances = sums.split([2 * d, sums.numel() - 2 * d])
    variances = variances.view(2, d)
    if covariances.numel() == 2 * d * d:
        off_diag = covariances.view(2, d, d).masked_fill(torch.eye(d, dtype=torch.bool, device=z_a.device), 0.0)
        covariance = (off_diag * off_diag).sum() / d
    else:  # the row-Gram form (d > 1 there, so its 2 numbers are never 2·d·d): ‖C‖²_F less the diagonal's
        covariance = (covariances - (variances * variances).sum(dim=1)).sum() / d
    return {
        "invariance": invariance_loss(z_a, z_b),
        "variance": F.relu(1.0 - torch.sqrt(variances + 1e-4)).mean(dim=1).sum(),
        "covariance": covariance,
    }


def vicreg_terms_sharded(
    z_a: torch.Tensor, z_b: torch.Tensor, all_reduce: AllReduce, num_global: int
) -> dict[str, torch.Tensor]:
    """This worker's unweighted VICReg terms from its local rows: invariance on its pairs; variance and
    covariance of the global batch of ``num_global`` rows from all-reduced sums (global means, then the
    centred squares and D×D cross products in one all-reduce). Equals ``vicreg_terms`` of the gathered batch
    once averaged over workers."""
    _check_pair(z_a, z_b)
    _check_global_rows(num_global, z_a.shape[0])
    means = _global_means(torch.stack([z_a, z_b]), all_reduce, num_global)
    return vicreg_terms_from_sums(z_a, z_b, all_reduce(vicreg_local_sums(z_a, z_b, means, num_global)))


def barlow_twins_local_sums(z_a: torch.Tensor, z_b: torch.Tensor, means: torch.Tensor,
                            z_a_global: torch.Tensor | None = None,
                            z_b_global: torch.Tensor | None = None) -> torch.Tensor:
    """This worker's share of the sums behind Barlow Twins' cross-correlation of the global batch, as one flat
    tensor of its rows centred on the global ``means`` (2 × D): [2·D squares | D·D cross product
    Σ(a − μ_a)(b − μ_b)ᵀ], or, given the gathered rows and ``covariance_from_row_gram``, [D products Σ ã∘b̃ |
    the sum of (ãÃᵀ)∘(b̃B̃ᵀ)] for its rows ã, b̃ and all rows Ã, B̃, standardised by the gathered rows'
    deviations: Σ_ij c_ij² = Σ_nm (ÃÃᵀ)_nm (B̃B̃ᵀ)_nm, D + 1 numbers to sum instead of D² + 2·D (at most twice
    the flops of the D×D product while N ≤ D)."""
    _check_pair(z_a, z_b)
    if z_a_global is not None and z_b_global is not None and covariance_from_row_gram(*z_a_global.shape):
        # The deviations come from the gathered rows, as the means do (no collective; their gradient returns
        # through the gather's backward): the rows must be standardised before their Gram blocks are formed.
        centred_global = torch.stack([z_a_global, z_b_global]) - means[:, None, :]
        deviations = torch.sqrt((centred_global * centred_global).mean(dim=1)) + 1e-5
        unit_a, unit_b = ((torch.stack([z_a, z_b]) - means[:, None, :]) / deviations[:, None, :]).unbind(0)
        unit_a_global, unit_b_global = (centred_global / deviations[:, None, :]).unbind(0)
        blocks = (unit_a @ unit_a_global.T) * (unit_b @ unit_b_global.T)  # n × N
        return torch.cat([(unit_a * unit_b).sum(dim=0), blocks.sum().reshape(1)])
    centred_a, centred_b = (torch.stack([z_a, z_b]) - means[:, None, :]).unbind(0)
    return torch.cat([(centred_a * centred_a).sum(dim=0), (centred_b * centred_b).sum(dim=0),
                      (centred_a.T @ centred_b).reshape(-1)])


def barlow_twins_loss_from_sums(
    sums: torch.Tensor, dim: int, num_global: int, lambda_offdiag: float = 5e-3
) -> torch.Tensor:
    """Barlow Twins' loss from ``barlow_twins_local_sums`` (either form) of ``dim``-wide embeddings summed over
    the workers' ``num_global`` rows."""
    if sums.numel() == dim + 1:  # the row-Gram form (D + 1 is never D² + 2·D)
        diagonal = sums[:dim] / num_global
        squares_of_all = sums[dim] / num_global**2
        on_diag = (diagonal - 1.0).pow(2).sum()
        return on_diag + lambda_offdiag * (squares_of_all - diagonal.pow(2).sum())
    squares, cross = sums.split([2 * dim, dim * dim])
    std_a, std_b = (torch.sqrt(squares.view(2, dim) / num_global) + 1e-5).unbind(0)
    corr = cross.view(dim, dim) / (std_a[:, None] * std_b[None, :]) / num_global
    return _barlow_twins_from_correlation(corr, lambda_offdiag)


def barlow_twins_loss_sharded(
    z_a: torch.Tensor, z_b: torch.Tensor, all_reduce: AllReduce, num_global: int, lambda_offdiag: float = 5e-3
) -> torch.Tensor:
    """``barlow_twins_loss`` of the global batch from this worker's local rows: global means, then the biased
    variances and the D×D centred cross product in one all-reduce."""
    _check_pair(z_a, z_b)
    _check_global_rows(num_global, z_a.shape[0])
    means = _global_means(torch.stack([z_a, z_b]), all_reduce, num_global)
    return barlow_twins_loss_from_sums(all_reduce(barlow_twins_local_sums(z_a, z_b, means)), z_a.shape[1],
                                       num_global, lambda_offdiag)


def nt_xent_loss_sharded(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    z_a_global: torch.Tensor,
    z_b_global: torch.Tensor,
    row_offset: int,
    temperature: float = 0.2,
) -> torch.Tensor:
    """This worker's share of NT-Xent over the global batch (the distributed SimCLR form): its 2n local rows
    against the 2N gathered columns. ``row_offset`` is where the local rows sit in the gathered batch
    (rank · n). The mean over workers equals ``nt_xent_loss(z_a_global, z_b_global)``."""
    _check_pair(z_a, z_b)
    _check_pair(z_a_global, z_b_global, "z_a_global, z_b_global")
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature!r}")
    n, num_global = z_a.shape[0], z_a_global.shape[0]
    if not 0 <= row_offset <= num_global - n:
        raise ValueError(f"row_offset: must be in [0, {num_global - n}] for {n} local of {num_global} rows, "
                         f"got {row_offset!r}")
    rows = F.normalize(torch.cat([z_a, z_b]), dim=1)
    columns = F.normalize(torch.cat([z_a_global, z_b_global]), dim=1)
    logits = (rows @ columns.T) / temperature
    in_view_a = torch.arange(row_offset, row_offset + n, device=rows.device)
    self_columns = torch.cat([in_view_a, in_view_a + num_global])
    positive_columns = torch.cat([in_view_a + num_global, in_view_a])
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=rows.device), self_columns] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive_columns)
