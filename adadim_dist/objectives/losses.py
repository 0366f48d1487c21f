"""Self-supervised losses as pure tensor functions.

Batch statistics (variance, covariance, cross-correlation, NT-Xent negatives) must see the whole global batch:
pass them gathered tensors. Per-pair terms (VICReg invariance) are exact on local tensors, because averaging
the per-worker means over equal-sized shards gives the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
