"""The driver's progress bar: what one line says, how often it is drawn on a terminal and in a log, and the board
it reads: keys in a real Ray instance's GCS."""

import io
import pickle
import time

import pytest

from adadim_dist.training.progress import NAMESPACE, ProgressBoard, ProgressPrinter, describe

PROGRESS = {"epoch": 2, "epochs": 4, "step": 300, "total_steps": 936, "images_per_s": 1100.0,
            "steps_per_s": 4.0, "loss": 12.3456, "alpha": 0.3333, "time": 1000.0}


def test_one_line_names_epoch_step_rate_loss_alpha_and_eta():
    # 636 steps left at 4 steps/s = 159 s, 9 s of which already passed since the post.
    assert describe(PROGRESS, now=1009.0) == ("epoch 2/4 step 300/936 (32%) 1100 img/s loss 12.346 α 0.333 "
                                              "ETA 00:02:30")
    assert describe({**PROGRESS, "steps_per_s": 0.0}, now=1009.0).endswith("ETA ?")


def test_posting_without_a_cluster_warns_once_and_never_raises(caplog):
    """The bar must never disturb training: rank 0 posts even when the GCS cannot be reached. (Before the tests
    that connect this process to a cluster.)"""
    import ray

    assert not ray.is_initialized()
    board = ProgressBoard()
    with caplog.at_level("WARNING"):
        board.post(PROGRESS)
        board.post_line("epoch 1/4 done")
    assert [r.getMessage() for r in caplog.records if "progress board unreachable" in r.getMessage()] and \
        len(caplog.records) == 1


@pytest.fixture(scope="module")
def gcs():
    """A real local Ray instance started by this process, as the driver starts one: its GCS holds the boards."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_a_log_gets_a_line_only_when_something_changed(gcs):
    board, log = ProgressBoard(), io.StringIO()
    printer = ProgressPrinter(board, stream=log, quiet_interval_s=0.01)
    assert not printer.interactive and printer.interval_s == 0.01
    with printer:
        board.post(PROGRESS)
        time.sleep(0.3)  # many polls of an unchanged board
        board.post({**PROGRESS, "step": 301})
        time.sleep(0.3)
    lines = log.getvalue().splitlines()
    assert [line.split(" step ")[1].split(" ")[0] for line in lines] == ["300/936", "301/936"]
    assert all(line.startswith("[progress] epoch 2/4") and "\r" not in line for line in lines)
    board.clear()


def test_rank0s_lines_are_printed_once_each_as_they_come_and_not_when_verbose(gcs):
    for show_lines in (True, False):
        board, log = ProgressBoard(), io.StringIO()
        # A bar interval longer than the test: only the lines (and the final bar at exit) are drawn.
        with ProgressPrinter(board, stream=log, quiet_interval_s=60, show_lines=show_lines):
            board.post(PROGRESS)
            board.post_line("epoch 1/4 done in 10s knn/top1_k20=70.00")
            time.sleep(1.5)
            assert log.getvalue().splitlines() == (["[adadim] epoch 1/4 done in 10s knn/top1_k20=70.00"]
                                                   if show_lines else [])
            board.post_line("epoch 2/4 done in 10s")
        lines = log.getvalue().splitlines()
        assert [line for line in lines if line.startswith("[adadim]")] == (
            ["[adadim] epoch 1/4 done in 10s knn/top1_k20=70.00", "[adadim] epoch 2/4 done in 10s"]
            if show_lines else [])
        assert lines[-1].startswith("[progress] epoch 2/4 step 300/936")
        board.clear()


def test_only_the_first_worker_group_of_a_driver_claims_its_start_up(gcs):
    board, other_driver = ProgressBoard(), ProgressBoard()
    assert board.claim_startup() is True
    # The copy a worker receives (pickled) is the same board; a group Ray restarted after a failure claims no more.
    assert pickle.loads(pickle.dumps(board)).claim_startup() is False
    assert other_driver.claim_startup() is True
    board.clear(), other_driver.clear()


def test_lines_keep_the_order_they_were_posted_in_across_copies_and_clear_leaves_no_key(gcs):
    from ray.experimental.internal_kv import _internal_kv_list

    board = ProgressBoard()
    restarted_rank0 = pickle.loads(pickle.dumps(board))  # the copy a new worker group receives, numbering from 0
    board.post_line("first group 0")
    restarted_rank0.post_line("second group 0")  # moves past the number already taken: nothing is overwritten
    restarted_rank0.post_line("second group 1")
    board.post_line("first group 1")
    progress, lines = board.read_since(0)
    assert progress is None and lines == ["first group 0", "second group 0", "second group 1", "first group 1"]
    assert board.read_since(3) == (None, ["first group 1"])
    board.post(PROGRESS)
    assert restarted_rank0.read() == PROGRESS
    board.clear()
    assert _internal_kv_list(board.prefix, namespace=NAMESPACE) == [] and board.read_since(0) == (None, [])
