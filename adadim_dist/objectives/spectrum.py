"""Singular-value spectra of embeddings and the number of collapsed dimensions (pure tensor functions).

Dimensional collapse (Jing et al. 2022; Ziyin et al. 2023) is the embeddings spanning fewer dimensions than
they have. Measured here on the centred embedding matrix X (N × D): its singular values σ_1 ≥ … ≥ σ_m
(m = min(N, D)), and the dimensions whose σ_i falls below ``COLLAPSE_THRESHOLD`` · σ_1 (relative to the
largest, like a numerical rank; scale-free) count as collapsed, together with the D − m that N rows cannot
span at all.
"""

from __future__ import annotations

import torch

#: σ_i / σ_1 below this counts as a collapsed dimension.
COLLAPSE_THRESHOLD = 1e-3


def singular_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Singular values of the centred rows of ``x`` (N × D), in float64, largest first."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected an N×D matrix with N ≥ 2, got shape {tuple(x.shape)}")
    x = x.double()
    return torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))


def collapsed_dimensions(spectrum: torch.Tensor, dim: int, threshold: float = COLLAPSE_THRESHOLD) -> int:
    """How many of the ``dim`` embedding dimensions are collapsed, given the spectrum of N embeddings."""
    if spectrum.numel() == 0 or float(spectrum[0]) <= 0:
        return dim  # complete collapse: every embedding is the same point
    alive = int((spectrum >= threshold * spectrum[0]).sum())
    return dim - alive
