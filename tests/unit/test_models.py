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


def test_pooled_grid_keeps_each_cell_of_the_last_feature_map():
    encoder = SmallCNN(width=4, downsample="stride", pool=2).eval()
    x = torch.randn(3, 3, 32, 32)
    assert encoder.num_features == 4 * 32 and encoder(x).shape == (3, 128)
    # The cells are the 2×2 averages of the 4×4 map that the global average would collapse into one value.
    feature_map = encoder.features[:-2](x)
    assert feature_map.shape[-2:] == (4, 4)
    cells = feature_map.unflatten(-1, (2, 2)).unflatten(-3, (2, 2)).mean(dim=(-1, -3))
    torch.testing.assert_close(encoder(x), cells.flatten(1))
    torch.testing.assert_close(encoder(x).unflatten(1, (32, 4)).mean(-1), feature_map.mean(dim=(-2, -1)))


def test_pool_reaches_the_model_from_the_config():
    from adadim_dist.config import ModelConfig
    from adadim_dist.models import build_model
    model = build_model(ModelConfig(small_cnn_width=4, small_cnn_downsample="stride", small_cnn_pool=2))
    assert model.projector[0].in_features == 128 and model.probe.in_features == 128
