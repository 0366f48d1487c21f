"""The training state that is not model or optimizer: epoch, AdaDim state, loader seed, MLflow run id and
the resolved config. Written atomically; read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

STATE_FILE = "state.pt"
# Sections that change the shapes or meaning of the saved tensors: resuming across a change is refused.
STRUCTURAL_KEYS = ("model", "training.strategy", "training.deepspeed.zero_stage", "optim.name")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used by this config."""


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same directory, then os.replace: a crash leaves the old file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(directory: Path, state: dict) -> None:
    atomic_save(state, Path(directory) / STATE_FILE)


def load_state(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {directory} has no {STATE_FILE}")
    return torch.load(path, map_location="cpu", weights_only=True)


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else None
    return tree


def check_compatible(saved_config: dict, cfg) -> None:
    current = cfg.model_dump(mode="json")
    for key in STRUCTURAL_KEYS:
        before, now = _lookup(saved_config, key), _lookup(current, key)
        if before != now:
            raise CheckpointError(
                f"checkpoint: incompatible with this config: {key} was {before!r}, now {now!r} "
                "(use --fresh or another run.name to start over)"
            )


def latest_complete_checkpoint(run_dir: Path, strategy: str) -> Path | None:
    """The newest ``epoch_NNNN`` directory under ``run_dir`` whose files are all there.

    Ray persists a reported checkpoint before its controller registers it; a driver killed in between leaves
    a checkpoint Ray's own snapshot does not list. The driver passes this one as ``resume_from_checkpoint``.
    """
    from ..distributed.engine import MODEL_STATE, TRAINER_STATE

    needed = [STATE_FILE] + ([MODEL_STATE, TRAINER_STATE] if strategy == "ddp" else ["deepspeed"])
    candidates = sorted(Path(run_dir).glob("epoch_[0-9][0-9][0-9][0-9]"), reverse=True)
    for candidate in candidates:
        if all((candidate / name).exists() for name in needed):
            return candidate
    return None
