"""The trained encoder out of a checkpoint, for use in other code: a safetensors file with torchvision's
parameter names for ResNet-18/50 (``conv1``, ``bn1``, ``layer1``–``layer4``; no ``fc``), this project's own
names for the small CNN, and the architecture in the file's metadata so ``load_encoder`` can rebuild it.

Pure torch: no Ray, FFCV or MLflow. Reading a checkpoint (DDP or DeepSpeed) is
``training.checkpoint.checkpoint_model_state``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .backbones import build_backbone

RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
ENCODER_PREFIX = "encoder."


class ExportError(ValueError):
    """A checkpoint or file that cannot be exported or loaded; the message names it."""


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's entries of an ``SSLModel`` state dict, without the ``encoder.`` prefix."""
    state = {k[len(ENCODER_PREFIX):]: v for k, v in model_state.items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise ExportError("checkpoint: no encoder weights (no key starts with 'encoder.')")
    return state


def torchvision_name(name: str, backbone: str) -> str:
    """This project's ResNet parameter name → torchvision's: ``stem.0`` → ``conv1``, ``stem.1`` → ``bn1``,
    ``stages.N`` → ``layerL.B`` (blocks numbered within each layer), ``shortcut`` → ``downsample``."""
    parts = name.split(".")
    if parts[0] == "stem":
        return ".".join([{"0": "conv1", "1": "bn1"}[parts[1]], *parts[2:]])
    if parts[0] == "stages":
        blocks = [(layer + 1, block) for layer, count in enumerate(RESNET_LAYERS[backbone]) for block in range(count)]
        layer, block = blocks[int(parts[1])]
        rest = ["downsample", *parts[3:]] if parts[2] == "shortcut" else parts[2:]
        return ".".join([f"layer{layer}", str(block), *rest])
    raise ExportError(f"unexpected ResNet parameter {name!r}")


def build_encoder(model_config: dict) -> nn.Module:
    return build_backbone(model_config["backbone"], bool(model_config.get("cifar_stem", True)),
                          int(model_config.get("small_cnn_width", 32)),
                          model_config.get("small_cnn_downsample", "maxpool"), int(model_config.get("small_cnn_pool", 1)))


ARCHITECTURE_KEYS = ("backbone", "cifar_stem", "small_cnn_width", "small_cnn_downsample", "small_cnn_pool")


def export_encoder(state: dict[str, torch.Tensor], model_config: dict, out: Path) -> dict[str, int]:
    """Write the encoder ``state`` (this project's names) to ``out`` as safetensors; returns counts."""
    from safetensors.torch import save_file

    backbone = model_config["backbone"]
    naming = "torchvision" if backbone in RESNET_LAYERS else "adadim"
    renamed = {torchvision_name(k, backbone) if naming == "torchvision" else k: v.detach().cpu().contiguous()
               for k, v in state.items()}
    metadata = {"format": "pt", "naming": naming,
                **{f"adadim.{key}": str(model_config.get(key)) for key in ARCHITECTURE_KEYS}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(renamed, str(partial), metadata=metadata)
    partial.replace(out)  # nothing half-written under the final name
    parameters = sum(v.numel() for k, v in renamed.items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return {"tensors": len(renamed), "parameters": parameters}


def load_encoder(path: str | Path) -> nn.Module:
    """The encoder written by ``export_encoder`` (``python -m adadim_dist.export``), rebuilt and loaded, in
    eval mode. A ResNet file also loads into ``torchvision.models.resnet18/50()`` with ``strict=False``
    (only ``fc`` is missing) when the job used ``model.cifar_stem=false``; with the CIFAR stem (3×3 ``conv1``,
    no max-pool) replace torchvision's ``conv1`` and ``maxpool`` first."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise ExportError(f"{path}: not a safetensors file ({type(err).__name__})") from None
    if "adadim.backbone" not in metadata:
        raise ExportError(f"{path}: not an encoder written by adadim_dist.export (no adadim.backbone metadata)")
    config = {key: metadata[f"adadim.{key}"] for key in ARCHITECTURE_KEYS}
    config["cifar_stem"] = config["cifar_stem"] == "True"
    encoder = build_encoder(config)
    state = load_file(str(path))
    if metadata.get("naming") == "torchvision":
        ours = {torchvision_name(k, config["backbone"]): k for k in encoder.state_dict()}
        state = {ours.get(k, k): v for k, v in state.items()}
    encoder.load_state_dict(state)
    return encoder.eval()
