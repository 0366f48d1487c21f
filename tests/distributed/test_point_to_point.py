"""``send_to`` / ``receive_from``: how the evaluation helper rank hands the kNN bank's features to rank 0."""

import pytest

from ._harness import run_ranks
from .workers import point_to_point_worker

pytestmark = pytest.mark.distributed


def test_tensors_of_unknown_shape_reach_rank0_and_other_ranks_take_no_part():
    run_ranks(point_to_point_worker, world_size=3, timeout=120)
