"""Ranks with different views of the run directory (tests/distributed/test_resume_agreement.py)."""

from __future__ import annotations

import json
from pathlib import Path

from adadim_dist.training.checkpoint import save_state
from adadim_dist.training.resume import ResumeMismatchError, agreed_resume_source


def write_checkpoint(run_dir: Path, epoch: int) -> None:
    directory = run_dir / f"epoch_{epoch:04d}"
    directory.mkdir(parents=True)
    (directory / "model.pt").write_bytes(b"weights")
    save_state(directory, {"epoch": epoch, "files": ["model.pt"]})


def resume_worker(rank: int, world_size: int, root: str, epochs_by_rank: list[list[int]]) -> None:
    """Rank r sees the checkpoints ``epochs_by_rank[r]`` in its own copy of the run directory; it records the
    epoch it would resume from, or the error every rank must raise."""
    run_dir = Path(root, f"rank{rank}", "run")
    for epoch in epochs_by_rank[rank]:
        write_checkpoint(run_dir, epoch)
    try:
        source = agreed_resume_source(None, str(run_dir), None, "ddp", rank)
        if source is None:
            outcome = {"fresh": True}
        else:
            with source as directory:
                outcome = {"directory": str(directory), "epoch": int(Path(directory).name.split("_")[1])}
    except ResumeMismatchError as err:
        outcome = {"error": str(err)}
    Path(root, f"outcome{rank}.json").write_text(json.dumps(outcome))


def finiteness_worker(rank: int, world_size: int, root: str) -> None:
    """Rank 1's BatchNorm statistics are NaN, rank 0's finite: every rank must get the same answer."""
    import torch

    from adadim_dist.training.state_checks import state_is_finite_on_every_rank

    state = {"weight": torch.ones(3), "running_mean": torch.full((3,), float("nan") if rank == 1 else 0.0)}
    both = state_is_finite_on_every_rank(state, torch.device("cpu"))
    clean = state_is_finite_on_every_rank({"weight": torch.ones(3)}, torch.device("cpu"))
    Path(root, f"finite{rank}.json").write_text(json.dumps([both, clean]))
