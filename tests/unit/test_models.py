"""Encoder shapes and the small CNN's two ways of halving the resolution."""

import pytest
import torch

from adadim_dist.models import SmallCNN, build_backbone


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
def test_small_cnn_maps_28_and_32_px_images_to_8_width_features(downsample):
    encoder = SmallCNN(width=4, downsample=downsample).eval()
    for size in (28, 32):
        assert encoder(torch.randn(2, 3, size, size)).shape == (2, 32)


def test_strided_small_cnn_has_no_pooling_and_convolves_at_lower_resolution():
    pooled, strided = SmallCNN(width=4, downsample="maxpool"), SmallCNN(width=4, downsample="stride")
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in pooled.modules()) == 3
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in strided.modules())
    # Same weights shapes: the variants differ only in where the resolution drops.
    assert [p.shape for p in pooled.parameters()] == [p.shape for p in strided.parameters()]
    assert [m.stride for m in strided.modules() if isinstance(m, torch.nn.Conv2d)] == [(1, 1)] + [(2, 2)] * 3


def test_unknown_downsample_is_named():
    with pytest.raises(ValueError, match="small_cnn_downsample"):
        build_backbone("small_cnn", small_cnn_downsample="avgpool")
