"""The trained encoder as an MLflow PyTorch model (``torch.export``'s pt2 format, loadable without unpickling
code), logged as the run's ``encoder`` artifact, or kept on disk while MLflow is down."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def saved_encoder(model, image_size: int) -> dict[str, bytes]:
    """The trained encoder saved as an MLflow PyTorch model in the ``pt2`` (torch.export) format, which loads
    without unpickling code: its files' contents by relative path (small enough to hand to another rank)."""
    import copy

    import mlflow.pytorch
    import numpy as np

    encoder = copy.deepcopy(model.encoder).float().cpu().eval()  # a plain copy (evaluation_copy), never ZeRO shards
    example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "encoder"
        mlflow.pytorch.save_model(encoder, str(target), input_example=example,
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        return {str(path.relative_to(target)): path.read_bytes() for path in sorted(target.rglob("*"))
                if path.is_file()}


def log_encoder(sink, files: dict[str, bytes], keep_dir: Path | None = None) -> None:
    """The trained encoder's files (``saved_encoder``) as the run's ``encoder`` artifact; into ``keep_dir`` when
    MLflow is down."""
    if sink.run_id is None:
        return
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "encoder"
        for name, content in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(content)
        try:
            sink.log_artifacts(target, "encoder")
        except Exception as err:  # noqa: BLE001 - MLflow down at the end must not fail a trained job
            if keep_dir is None:
                raise
            import shutil

            shutil.rmtree(keep_dir / "encoder", ignore_errors=True)
            shutil.copytree(target, keep_dir / "encoder")
            logger.warning("MLflow unreachable (%s): the encoder is saved in %s instead; log it later with "
                           "mlflow artifacts log-artifacts --local-dir %s --run-id %s --artifact-path encoder",
                           type(err).__name__, keep_dir / "encoder", keep_dir / "encoder", sink.run_id)
