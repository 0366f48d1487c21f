"""Evaluation split across ranks (``eval.split_across_ranks``): each rank embeds its part of the kNN bank and of
the test set, and rank 0 merges every rank's nearest neighbours. The result must be one process's."""

import pytest

from ._harness import run_ranks
from .workers import shared_evaluation_worker

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_split_across_ranks_equals_one_process(world_size, tmp_path):
    for name in ("train.beton", "test.beton"):  # what the baseline cache's key reads (the images are in memory)
        (tmp_path / name).write_bytes(b"x")
    run_ranks(shared_evaluation_worker, world_size=world_size, args=(str(tmp_path),), timeout=180)
