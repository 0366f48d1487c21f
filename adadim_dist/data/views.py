"""FFCV pipelines for the two SSL views (from ``DataConfig.view_a`` / ``view_b``), the eval view and labels.

Both views decode the one stored ``image`` field: view a is the field's own pipeline (output name
``image``), view b a second pipeline named ``image_b`` whose ``PipelineSpec`` has ``source='image'``.
Each pipeline is

    seeded random-resized-crop decoder → flip → colour jitter → grayscale → blur → solarize → to float

where a step whose probability (or magnitude) is 0 is left out, so asymmetric recipes (BYOL: blur 1.0 /
0.1, solarize 0 / 0.2) cost nothing for the steps a view does not use. The float stage normalises with
``DataConfig.mean``/``std`` (0–1 scale) in one compiled pass (:class:`~.ops.NormalizeToTensor`) and returns
float32 N×C×H×W tensors, moved to a GPU by ``ToDevice`` when a device is given.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _ffcv  # noqa: F401  (before any ffcv import)
from ffcv.fields.decoders import IntDecoder
from ffcv.pipeline import PipelineSpec
from ffcv.pipeline.operation import Operation
from ffcv.transforms import Squeeze, ToDevice, ToTensor

from ..config import DataConfig, ViewConfig
from .ops import (
    CenterCropDecoder,
    ColorJitter,
    GaussianBlur,
    NormalizeToTensor,
    RandomGrayscale,
    RandomSolarize,
    SeededHorizontalFlip,
    SeededRandomResizedCropDecoder,
    derive_seed,
)

#: Output names of the FFCV pipelines (the Loader returns them in the file's field order, then extra ones).
VIEW_A = "image"
VIEW_B = "image_b"
LABEL = "label"


def to_float_images(mean: Sequence[float], std: Sequence[float], device: torch.device | str | None = None) -> list:
    """uint8 N×H×W×3 arrays → normalised float32 N×C×H×W tensors on ``device`` (CPU when None).

    ``mean``/``std`` are in the 0–1 scale of ``DataConfig``. Normalisation runs on the CPU in the compiled
    :class:`NormalizeToTensor` (FFCV's GPU ``NormalizeImage`` needs cupy); ``ToDevice`` then copies the
    float batch to the GPU.
    """
    steps: list[Operation] = [NormalizeToTensor(mean, std)]
    if device is not None and torch.device(device).type != "cpu":
        steps.append(ToDevice(torch.device(device), non_blocking=True))
    return steps


def augmentations(view: ViewConfig, seed: int) -> list[Operation]:
    """The uint8 augmentation steps of one view after the crop; steps with probability 0 are left out."""
    steps: list[Operation] = []
    if view.flip_prob > 0:
        steps.append(SeededHorizontalFlip(view.flip_prob, derive_seed(seed, "flip")))
    if view.jitter_prob > 0 and max(view.brightness, view.contrast, view.saturation, view.hue) > 0:
        steps.append(ColorJitter(view.brightness, view.contrast, view.saturation, view.hue,
                                 prob=view.jitter_prob, seed=derive_seed(seed, "jitter")))  # fmt: skip
    if view.grayscale_prob > 0:
        steps.append(RandomGrayscale(view.grayscale_prob, derive_seed(seed, "grayscale")))
    if view.blur_prob > 0:
        steps.append(GaussianBlur(view.blur_sigma, view.blur_prob, derive_seed(seed, "blur")))
    if view.solarize_prob > 0 and view.solarize_threshold < 256:
        steps.append(RandomSolarize(view.solarize_threshold, view.solarize_prob, derive_seed(seed, "solarize")))
    return steps


def build_view_spec(view: ViewConfig, data_cfg: DataConfig, seed: int, device=None) -> PipelineSpec:
    """One augmented view of the ``image`` field, seeded by ``seed`` (give each view its own seed)."""
    size = data_cfg.image_size
    crop = SeededRandomResizedCropDecoder((size, size), scale=view.crop_scale, ratio=view.crop_ratio,
                                          seed=derive_seed(seed, "crop"))  # fmt: skip
    transforms = augmentations(view, seed) + to_float_images(data_cfg.mean, data_cfg.std, device)
    return PipelineSpec("image", decoder=crop, transforms=transforms)


def build_two_view_specs(data_cfg: DataConfig, seed: int, device=None) -> dict[str, PipelineSpec]:
    """``{VIEW_A: ..., VIEW_B: ...}``: the two views, each with a seed derived from the loader ``seed``."""
    return {
        VIEW_A: build_view_spec(data_cfg.view_a, data_cfg, derive_seed(seed, "view_a"), device),
        VIEW_B: build_view_spec(data_cfg.view_b, data_cfg, derive_seed(seed, "view_b"), device),
    }


def build_eval_spec(data_cfg: DataConfig, device=None) -> PipelineSpec:
    """The deterministic evaluation view: centre crop of the shorter side, resized to ``image_size``."""
    size = data_cfg.image_size
    decoder = CenterCropDecoder((size, size))
    return PipelineSpec("image", decoder=decoder, transforms=to_float_images(data_cfg.mean, data_cfg.std, device))


def build_label_pipeline(device=None) -> list[Operation]:
    """int64 labels as a 1-d tensor of the batch size."""
    steps: list[Operation] = [IntDecoder(), ToTensor(), Squeeze(1)]
    if device is not None and torch.device(device).type != "cpu":
        steps.append(ToDevice(torch.device(device), non_blocking=True))
    return steps
