"""Encoders (single-device code; parallelism is applied by the engine). Each returns a flat feature vector."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A 4-block CNN for 28–32 px inputs: fast on CPU, pool²·8·width features.

    ``downsample="maxpool"`` convolves at full resolution, then max-pools (blocks 2–4); ``"stride"`` lets
    those convolutions stride by 2 instead, as ResNets do: 3.6× fewer FLOPs at the same width.
    ``pool`` is the side of the average-pooled grid kept as the representation: 1 is the usual global
    average; 2 keeps a coarse layout (top/bottom, left/right of a garment), which a small encoder cannot
    otherwise encode in its channels.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, downsample: str = "maxpool", pool: int = 1) -> None:
        super().__init__()
        if downsample not in ("maxpool", "stride"):
            raise ValueError(f"small_cnn_downsample: must be maxpool or stride, got {downsample!r}")
        if pool < 1:
            raise ValueError(f"small_cnn_pool: must be at least 1, got {pool!r}")

        def block(c_in: int, c_out: int, down: bool) -> list[nn.Module]:
            stride = 2 if down and downsample == "stride" else 1
            layers = [nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                      nn.ReLU(inplace=True)]
            return layers + ([nn.MaxPool2d(2)] if down and downsample == "maxpool" else [])

        self.features = nn.Sequential(
            *block(in_channels, width, False),
            *block(width, 2 * width, True),
            *block(2 * width, 4 * width, True),
            *block(4 * width, 8 * width, True),
            nn.AdaptiveAvgPool2d(pool),
            nn.Flatten(),
        )
        self.num_features = pool * pool * 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(c_in, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """ResNet-18/50 (He et al. 2016). ``cifar_stem``: 3×3 stride-1 stem without max-pool, for small images."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], cifar_stem: bool) -> None:
        super().__init__()
        if cifar_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        stages, c_in = [], 64
        for i, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(block(c_in, planes, stride))
                c_in = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


def build_backbone(name: str, cifar_stem: bool = True, small_cnn_width: int = 32,
                   small_cnn_downsample: str = "maxpool", small_cnn_pool: int = 1) -> nn.Module:
    if name == "small_cnn":
        return SmallCNN(width=small_cnn_width, downsample=small_cnn_downsample, pool=small_cnn_pool)
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], cifar_stem)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], cifar_stem)
    raise ValueError(f"backbone: must be one of small_cnn, resnet18, resnet50, got {name!r}")
