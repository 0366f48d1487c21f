"""Which checkpoint a (re)started worker group resumes from, decided once, by rank 0, for every rank.

On shared storage (NFS, EFS) attribute caches can show one node ``epoch_0003`` while another still sees only
``epoch_0002``. Ranks that chose for themselves would run different numbers of epochs (their collectives then
hang), or under DDP load different weights after DDP's initial broadcast and drift apart silently. So rank 0
chooses, every rank opens that same checkpoint, and if any rank cannot, every rank stops with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributed import all_gather_objects, broadcast_object
from .checkpoint import STATE_FILE, is_complete, latest_complete_checkpoint, load_state
from .storage import Location


class ResumeMismatchError(RuntimeError):
    """A rank cannot load the checkpoint rank 0 chose."""


@dataclass(frozen=True)
class ResumeChoice:
    """``registered``: Ray's registered checkpoint (every rank has it from ``ray.train.get_checkpoint()``);
    ``disk``: the directory ``name`` under the run directory (complete but not registered yet)."""

    kind: str
    epoch: int
    name: str | None = None

    def describe(self) -> str:
        return f"{self.name or 'the registered checkpoint'} (after epoch {self.epoch})"


def _epoch_if_complete(directory: Location, strategy: str) -> int:
    return load_state(directory)["epoch"] if is_complete(directory, strategy) else -1


def choose_resume(checkpoint, run_dir: str | None, resume_dir: str | None, strategy: str) -> ResumeChoice | None:
    """Ray's latest registered checkpoint, or the newest complete one in storage (persisted but not yet
    registered when the previous driver died: under ``run_dir``, else the driver's ``resume_dir``; each a local
    path or a URI such as ``s3://...``), whichever is later; a registered one that lost a rank's shard since is
    passed over. None: a fresh start."""
    on_disk = latest_complete_checkpoint(run_dir, strategy) if run_dir else None
    fallback = on_disk or (Location.of(resume_dir) if resume_dir else None)
    if fallback is not None and not (fallback / STATE_FILE).is_file():
        fallback = None  # removed since (Ray keeps only the newest checkpoints)
    registered_epoch = -1
    if checkpoint is not None:  # checked where Ray keeps it: nothing is downloaded to choose
        registered_epoch = _epoch_if_complete(Location.of_checkpoint(checkpoint), strategy)
    fallback_epoch = load_state(fallback)["epoch"] if fallback is not None else -1
    if fallback is not None and fallback_epoch > registered_epoch:
        return ResumeChoice("disk", fallback_epoch, fallback.name)
    return ResumeChoice("registered", registered_epoch) if registered_epoch >= 0 else None


def open_choice(choice: ResumeChoice | None, checkpoint, run_dir: str | None, resume_dir: str | None,
                strategy: str):
    """(a context manager yielding the chosen checkpoint's directory on this rank, or None; what is wrong on
    this rank, or None). A checkpoint on an object store is downloaded into a temporary directory."""
    if choice is None:
        return None, None
    if choice.kind == "registered":
        if checkpoint is None:
            return None, "Ray gave this rank no registered checkpoint"
        epoch = _epoch_if_complete(Location.of_checkpoint(checkpoint), strategy)
        if epoch != choice.epoch:
            return None, f"its registered checkpoint is {'incomplete' if epoch < 0 else f'after epoch {epoch}'}"
        return checkpoint.as_directory(), None
    base = Location.of(run_dir) if run_dir else Location.of(resume_dir).parent
    directory = base / choice.name
    epoch = _epoch_if_complete(directory, strategy) if directory.is_dir() else -1
    if epoch != choice.epoch:
        return None, f"{directory} is {'missing or incomplete' if epoch < 0 else f'after epoch {epoch}'} there"
    return directory.local_copy(), None


def agreed_resume_source(checkpoint, run_dir: str | None, resume_dir: str | None, strategy: str, rank: int):
    """Rank 0's choice, opened on every rank (a collective: every rank calls it). A context manager yielding a
    directory, or None for a fresh start. Raises :class:`ResumeMismatchError` on every rank when any rank cannot
    open the chosen checkpoint."""
    choice = broadcast_object(choose_resume(checkpoint, run_dir, resume_dir, strategy) if rank == 0 else None)
    source, problem = open_choice(choice, checkpoint, run_dir, resume_dir, strategy)
    problems = [(r, p) for r, p in enumerate(all_gather_objects(problem)) if p]
    if problems:
        ranks = ", ".join(f"rank {r}: {p}" for r, p in problems)
        raise ResumeMismatchError(
            f"resume: rank 0 chose {choice.describe()}, but not every rank can load it ({ranks}); the ranks' views "
            "of run.storage_path differ (shared storage not yet in sync?): restart the job once they agree")
    return source
