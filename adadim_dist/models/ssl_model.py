"""Encoder + projector + online linear probe, as one module so DDP / DeepSpeed wrap a single object."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import build_backbone


def build_projector(in_features: int, dims: tuple[int, ...]) -> nn.Sequential:
    """MLP: (Linear → BatchNorm → ReLU) for every hidden width, then a plain Linear to the last width."""
    if not dims:
        raise ValueError("projector_dims: needs at least one width")
    layers: list[nn.Module] = []
    width = in_features
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dims[-1]))
    return nn.Sequential(*layers)


class SSLModel(nn.Module):
    """forward(x) → (R, Z, probe logits). The probe sees detached R, so it never shapes the encoder."""

    def __init__(self, backbone: str, cifar_stem: bool, projector_dims: tuple[int, ...], num_classes: int,
                 small_cnn_width: int = 32, small_cnn_downsample: str = "maxpool", small_cnn_pool: int = 1) -> None:
        super().__init__()
        self.encoder = build_backbone(backbone, cifar_stem, small_cnn_width, small_cnn_downsample, small_cnn_pool)
        self.projector = build_projector(self.encoder.num_features, tuple(projector_dims))
        self.probe = nn.Linear(self.encoder.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.encoder(x)
        return r, self.projector(r), self.probe(r.detach())

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder + projector parameters, probe parameters): one optimizer, two groups (DeepSpeed allows one)."""
        probe_ids = {id(p) for p in self.probe.parameters()}
        return [p for p in self.parameters() if id(p) not in probe_ids], list(self.probe.parameters())


def build_model(model_cfg) -> SSLModel:
    return SSLModel(model_cfg.backbone, model_cfg.cifar_stem, model_cfg.projector_dims, model_cfg.num_classes,
                    model_cfg.small_cnn_width, model_cfg.small_cnn_downsample, model_cfg.small_cnn_pool)
