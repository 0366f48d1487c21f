"""A PNG grid of what the model sees: for each of the first images, the stored image and its two views."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..config import DataConfig
from .writer import _current_umask


def denormalize(images, mean, std) -> np.ndarray:
    """Normalised float N×C×H×W tensor → N×H×W×C floats in [0, 1] for display."""
    array = images.detach().cpu().numpy().transpose(0, 2, 3, 1)
    return np.clip(array * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def save_preview(data_cfg: DataConfig, path: str | Path, out: str | Path, num_images: int = 8, seed: int = 0) -> Path:
    """Write a grid with rows (stored image, view a, view b) and one column per image to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    from .loader import build_preview_loader

    out = Path(out)
    view_a, view_b, original = build_preview_loader(data_cfg, path, num_images, seed)
    rows = [
        ("stored", np.clip(original.numpy().transpose(0, 2, 3, 1) / 255.0, 0.0, 1.0)),
        ("view a", denormalize(view_a, data_cfg.mean, data_cfg.std)),
        ("view b", denormalize(view_b, data_cfg.mean, data_cfg.std)),
    ]
    count = len(rows[0][1])
    figure, axes = plt.subplots(len(rows), count, figsize=(1.3 * count + 0.6, 1.3 * len(rows)), squeeze=False)
    for row, (title, images) in enumerate(rows):
        for column in range(count):
            axis = axes[row][column]
            axis.imshow(images[column], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row][0].set_ylabel(title)
    figure.suptitle(f"{Path(path).name}: seed {seed}")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temp_name, dpi=100, format="png")
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600
        os.replace(temp_name, out)
    finally:
        plt.close(figure)
        Path(temp_name).unlink(missing_ok=True)
    return out
