"""Singular spectra of embeddings: collapsed dimensions as metrics, the spectra as JSON and figures."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def plot_spectra(curves: dict[str, list[float]], path: Path, title: str) -> Path:
    """Sorted singular values (log scale, each normalised by its largest) of one or more embeddings."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in curves.items():
        top = values[0] if values and values[0] > 0 else 1.0
        ax.semilogy(range(1, len(values) + 1), [max(v / top, 1e-12) for v in values], label=name, lw=1.2)
    ax.axhline(1e-3, color="grey", ls="--", lw=0.8, label="collapse threshold (1e-3 · σ₁)")
    ax.set(xlabel="index i (sorted)", ylabel="σ_i / σ_1", ylim=(1e-8, 2))
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spectrum_metrics(r: torch.Tensor, z: torch.Tensor, spectra: dict | None = None,
                     suffix: str = "") -> dict[str, float]:
    """Collapsed dimensions of R and Z (``adadim_dist.objectives.spectrum``), and their spectra: held-out
    embeddings without ``suffix``, the global training batch with ``suffix="_batch"``."""
    from ..objectives.spectrum import collapsed_dimensions, singular_spectrum

    results = {}
    for name, x in (("r", r), ("z", z)):
        spectrum = singular_spectrum(x)
        if suffix:
            results[f"spectrum/batch_collapsed_{name}"] = float(collapsed_dimensions(spectrum, x.shape[1]))
        else:
            results[f"spectrum/collapsed_{name}"] = float(collapsed_dimensions(spectrum, x.shape[1]))
            results[f"spectrum/dim_{name}"] = float(x.shape[1])
        if spectra is not None:
            spectra[name + suffix] = spectrum.tolist()
    return results


def log_spectra(sink, spectra: dict, epoch: int) -> None:
    """The spectra of an evaluation (test embeddings ``r``, ``z``; last global training batch ``r_batch``,
    ``z_batch``) as ``spectrum/epoch_NNNN.json`` and ``.png`` artifacts (rank 0)."""
    if sink.run_id is None or not spectra:
        return
    with tempfile.TemporaryDirectory() as directory:
        stem = Path(directory) / f"epoch_{epoch:04d}"
        stem.with_suffix(".json").write_text(json.dumps(spectra))
        labels = {name: f"{name[0].upper()} "
                        f"({'global training batch' if name.endswith('_batch') else 'test embeddings'})"
                  for name in spectra}
        plot_spectra({labels[k]: v for k, v in spectra.items()}, stem.with_suffix(".png"),
                     f"singular values after epoch {epoch}")
        try:
            sink.log_artifacts(Path(directory), "spectrum")
        except Exception as err:  # noqa: BLE001 - MLflow down: the metrics are buffered, the figure is skipped
            logger.warning("MLflow unreachable (%s): spectrum artifacts of epoch %d not logged", type(err).__name__,
                           epoch)
