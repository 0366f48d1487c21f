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
    return load_tensors(path)


def load_tensors(path: Path):
    """``torch.load(weights_only=True)`` of a checkpoint file; a file that is not one (truncated, corrupt, not
    written by torch.save) is a :class:`CheckpointError` naming it, not the unpickler's traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and unpickler errors alike
        # The unpickler's own text suggests weights_only=False, which is exactly what must not be done here.
        if "GLOBAL" in str(err):  # the unpickler met a class or function: refused, never run
            raise CheckpointError(f"checkpoint: {path} holds objects other than tensors and plain data: refused "
                                  "(checkpoints are loaded with weights_only=True)") from None
        raise CheckpointError(f"checkpoint: {path} cannot be read: not a file torch.save wrote, or damaged "
                              f"({type(err).__name__})") from None


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else None
    return tree


def check_compatible(saved_config: dict, cfg) -> None:
    from ..config import with_defaults

    saved_config, current = with_defaults(saved_config), cfg.model_dump(mode="json")
    for key in STRUCTURAL_KEYS:
        before, now = _lookup(saved_config, key), _lookup(current, key)
        if before != now:
            raise CheckpointError(
                f"checkpoint: incompatible with this config: {key} was {before!r}, now {now!r} "
                "(use --fresh or another run.name to start over)"
            )


def checkpoint_files(directory: Path) -> list[str]:
    """The files under ``directory`` (relative paths): what one rank contributes to a checkpoint."""
    directory = Path(directory)
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def is_complete(directory: Path, strategy: str) -> bool:
    """Whether every file of the checkpoint is there: each rank's shard, as listed in ``state.pt``.

    Every rank persists its own part of a checkpoint (DeepSpeed: one optimizer shard per rank, and under
    ZeRO-3 one model shard per rank); rank 0 records the union in ``state.pt`` (key ``files``), so a rank
    that died before its upload leaves a checkpoint this returns False for. Checkpoints written before the
    manifest existed fall back to the files every strategy always writes.
    """
    from ..distributed.engine import MODEL_STATE, TRAINER_STATE

    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        return False
    try:
        listed = load_state(directory).get("files")
    except Exception:  # a truncated state.pt: the checkpoint is not usable
        return False
    needed = listed if listed is not None else ([MODEL_STATE, TRAINER_STATE] if strategy == "ddp" else ["deepspeed"])
    return all((directory / name).exists() for name in needed)


def latest_complete_checkpoint(run_dir: Path, strategy: str) -> Path | None:
    """The newest ``epoch_NNNN`` directory under ``run_dir`` whose files are all there.

    Ray persists a reported checkpoint before its controller registers it; a driver killed in between leaves
    a checkpoint Ray's own snapshot does not list. The driver passes this one as ``resume_from_checkpoint``.
    An incomplete one (a rank's shard missing) is passed over for the one before it.
    """
    candidates = sorted(Path(run_dir).glob("epoch_[0-9][0-9][0-9][0-9]"), reverse=True)
    for candidate in candidates:
        if is_complete(candidate, strategy):
            return candidate
    return None
