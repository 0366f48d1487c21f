"""The training state that is not model or optimizer: epoch, AdaDim state, loader seed, MLflow run id and
the resolved config. Written atomically; read with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from .._files import replace_atomically
from .storage import Location

STATE_FILE = "state.pt"
# Sections that change the shapes or meaning of the saved tensors: resuming across a change is refused.
STRUCTURAL_KEYS = ("model", "training.strategy", "training.deepspeed.zero_stage", "optim.name")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used by this config."""


def atomic_save(obj, path: Path) -> None:
    """torch.save as a whole-file replacement: a crash leaves the old file."""
    replace_atomically(path, lambda temporary: torch.save(obj, temporary))


def save_state(directory: Path, state: dict) -> None:
    atomic_save(state, Path(directory) / STATE_FILE)


def load_state(directory: "Path | str | Location") -> dict:
    """``state.pt`` of a checkpoint directory: a local path, a URI (``s3://...``) or a :class:`Location`."""
    location = Location.of(directory)
    if location.is_local:
        path = Path(location.path) / STATE_FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint: {directory} has no {STATE_FILE}")
        return load_tensors(path)
    state = location / STATE_FILE
    if not state.is_file():
        raise CheckpointError(f"checkpoint: {location} has no {STATE_FILE}")
    return load_tensors(io.BytesIO(state.read_bytes()), name=str(state))


def load_tensors(path: "Path | io.BytesIO", name: str | None = None):
    """``torch.load(weights_only=True)`` of a checkpoint file (or its bytes, called ``name``); a file that is not
    one (truncated, corrupt, not written by torch.save) is a :class:`CheckpointError` naming it, not the
    unpickler's traceback."""
    path_name = name or path
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and unpickler errors alike
        # The unpickler's own text suggests weights_only=False, which is exactly what must not be done here.
        if "GLOBAL" in str(err):  # the unpickler met a class or function: refused, never run
            raise CheckpointError(f"checkpoint: {path_name} holds objects other than tensors and plain data: "
                                  "refused (checkpoints are loaded with weights_only=True)") from None
        raise CheckpointError(f"checkpoint: {path_name} cannot be read: not a file torch.save wrote, or damaged "
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


def is_complete(directory: "Path | str | Location", strategy: str) -> bool:
    """Whether every file of the checkpoint is there: each rank's shard, as listed in ``state.pt``.

    Every rank persists its own part of a checkpoint (DeepSpeed: one optimizer shard per rank, and under
    ZeRO-3 one model shard per rank); rank 0 records the union in ``state.pt`` (key ``files``), so a rank
    that died before its upload leaves a checkpoint this returns False for. Checkpoints written before the
    manifest existed fall back to the files every strategy always writes. Local or on an object store: the
    directory is listed once.
    """
    from ..distributed.engine import MODEL_STATE, TRAINER_STATE

    directory = Location.of(directory)
    present = directory.tree()
    if STATE_FILE not in present:
        return False
    try:
        listed = load_state(directory).get("files")
    except Exception:  # a truncated state.pt: the checkpoint is not usable
        return False
    needed = listed if listed is not None else ([MODEL_STATE, TRAINER_STATE] if strategy == "ddp" else ["deepspeed"])
    return all(name in present for name in needed)


def latest_complete_checkpoint(run_dir: "Path | str | Location", strategy: str) -> Location | None:
    """The newest ``epoch_NNNN`` directory under ``run_dir`` (a local path, a URI or a :class:`Location`) whose
    files are all there.

    Ray persists a reported checkpoint before its controller registers it; a driver killed in between leaves
    a checkpoint Ray's own snapshot does not list. The driver passes this one as ``resume_from_checkpoint``.
    An incomplete one (a rank's shard missing) is passed over for the one before it.
    """
    candidates = Location.of(run_dir).children("epoch_[0-9][0-9][0-9][0-9]", directories_only=True)
    for candidate in reversed(candidates):
        if is_complete(candidate, strategy):
            return candidate
    return None


def checkpoint_model_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(the whole model's state dict on CPU, the job's resolved config) of a DDP or DeepSpeed checkpoint
    directory (``<run.storage_path>/<run.name>/epoch_NNNN``)."""
    from ..distributed.engine import MODEL_STATE
    from ..models.export import ExportError

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"--checkpoint: {directory} is not a directory")
    try:
        config = load_state(directory)["config"]
    except CheckpointError as err:
        raise ExportError(f"--checkpoint: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ExportError(f"--checkpoint: {directory / 'state.pt'} holds no job config")
    if (directory / MODEL_STATE).is_file():
        try:
            return load_tensors(directory / MODEL_STATE), config
        except CheckpointError as err:
            raise ExportError(f"--checkpoint: {err}") from None
    deepspeed_dir = directory / "deepspeed"
    if not deepspeed_dir.is_dir():
        raise ExportError(f"--checkpoint: {directory} holds neither {MODEL_STATE} (DDP) nor deepspeed/ (DeepSpeed)")
    # DeepSpeed's own files hold more than tensors and load only with weights_only=False (README, Known limits):
    # export checkpoints your own jobs wrote.
    if config["training"]["deepspeed"]["zero_stage"] == 0:
        (model_file,) = sorted(deepspeed_dir.glob("mp_rank_*_model_states.pt"))[:1] or [None]
        if model_file is None:
            raise ExportError(f"--checkpoint: {deepspeed_dir} has no mp_rank_*_model_states.pt")
        return torch.load(model_file, map_location="cpu", weights_only=False)["module"], config
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag="deepspeed"), config
