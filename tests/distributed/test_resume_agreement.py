"""Decisions every rank must share: the resume checkpoint (rank 0 chooses; shared storage may show ranks
different listings) and whether the state is finite before a checkpoint."""

import json
from pathlib import Path

import pytest

from ._harness import run_ranks
from .resume_workers import resume_worker

pytestmark = pytest.mark.distributed


def outcomes(tmp_path, epochs_by_rank):
    run_ranks(resume_worker, len(epochs_by_rank), (str(tmp_path), epochs_by_rank))
    return [json.loads(Path(tmp_path, f"outcome{r}.json").read_text()) for r in range(len(epochs_by_rank))]


def test_a_rank_that_sees_a_newer_checkpoint_still_resumes_from_rank_0s_choice(tmp_path):
    """Rank 1's listing already shows epoch 3; rank 0's does not yet: both resume after epoch 2, each from its
    own view of the run directory."""
    result = outcomes(tmp_path, [[1, 2], [1, 2, 3]])
    assert [r["epoch"] for r in result] == [2, 2]
    assert [Path(r["directory"]).parts[-3] for r in result] == ["rank0", "rank1"]


def test_a_rank_that_cannot_see_rank_0s_checkpoint_stops_every_rank_with_one_line(tmp_path):
    """Rank 0 sees epoch 3, rank 1 only epoch 2: nobody trains (they would run different epochs and hang)."""
    result = outcomes(tmp_path, [[2, 3], [2]])
    errors = [r.get("error") for r in result]
    assert errors[0] == errors[1] and errors[0] is not None and "\n" not in errors[0]
    assert errors[0].startswith("resume: rank 0 chose epoch_0003 (after epoch 3), but not every rank can load it "
                                "(rank 1: ")
    assert "missing or incomplete" in errors[0]


def test_no_checkpoint_on_rank_0_is_a_fresh_start_everywhere(tmp_path):
    assert outcomes(tmp_path, [[], [1]]) == [{"fresh": True}, {"fresh": True}]


def test_ranks_agree_on_whether_the_state_is_finite_before_saving(tmp_path):
    """Under per-worker BatchNorm each rank's statistics are its own: one NaN rank stops every rank."""
    from .resume_workers import finiteness_worker

    run_ranks(finiteness_worker, 2, (str(tmp_path),))
    assert [json.loads(Path(tmp_path, f"finite{r}.json").read_text()) for r in range(2)] == [[False, True]] * 2
