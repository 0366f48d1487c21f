"""Backbones, projector and the SSL model (torch only, single-device code)."""

from .backbones import ResNet, SmallCNN, build_backbone
from .export import load_encoder
from .ssl_model import SSLModel, build_model, build_projector

__all__ = ["ResNet", "SmallCNN", "SSLModel", "build_backbone", "build_model", "build_projector", "load_encoder"]
