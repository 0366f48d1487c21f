"""Spectra and collapsed-dimension counts on embeddings whose rank is known by construction."""

import pytest
import torch

from adadim_dist.objectives.spectrum import collapsed_dimensions, singular_spectrum


def test_rank_k_embeddings_have_d_minus_k_collapsed_dimensions():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0][:, :5]  # 5 orthonormal directions
    x = torch.randn(200, 5, generator=generator) @ basis.T + 3.0  # an offset: centring removes it
    spectrum = singular_spectrum(x)
    assert spectrum.shape == (16,) and torch.all(spectrum[:-1] >= spectrum[1:])
    assert collapsed_dimensions(spectrum, 16) == 11
    # Scale-free, and a direction at 1e-4 of the largest counts as collapsed, one at 1e-2 does not.
    assert collapsed_dimensions(singular_spectrum(1e6 * x), 16) == 11
    small = torch.randn(200, 2, generator=generator) @ torch.linalg.qr(torch.randn(16, 16, generator=generator))[0][:, :2].T
    assert collapsed_dimensions(singular_spectrum(x + 1e-5 * small), 16) == 11
    assert collapsed_dimensions(singular_spectrum(x + 0.3 * small), 16) == 9


def test_complete_collapse_and_too_few_rows():
    assert collapsed_dimensions(singular_spectrum(torch.ones(10, 8)), 8) == 8
    # 4 rows span at most 3 centred dimensions: the other 5 of 8 cannot be spanned.
    assert collapsed_dimensions(singular_spectrum(torch.randn(4, 8)), 8) == 5
    with pytest.raises(ValueError, match="N ≥ 2"):
        singular_spectrum(torch.randn(1, 8))
