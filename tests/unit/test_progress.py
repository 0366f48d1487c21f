"""The driver's progress bar: what one line says, and how often it is drawn on a terminal and in a log."""

import io

from adadim_dist.training.progress import ProgressBoard, ProgressPrinter, describe

PROGRESS = {"epoch": 2, "epochs": 4, "step": 300, "total_steps": 936, "images_per_s": 1100.0,
            "steps_per_s": 4.0, "loss": 12.3456, "alpha": 0.3333, "time": 1000.0}


def test_one_line_names_epoch_step_rate_loss_alpha_and_eta():
    # 636 steps left at 4 steps/s = 159 s, 9 s of which already passed since the post.
    assert describe(PROGRESS, now=1009.0) == ("epoch 2/4 step 300/936 (32%) 1100 img/s loss 12.346 α 0.333 "
                                              "ETA 00:02:30")
    assert describe({**PROGRESS, "steps_per_s": 0.0}, now=1009.0).endswith("ETA ?")


class _Remote:
    """A local stand-in for the actor handle: ``.read.remote()`` returns what ray.get then unwraps."""

    def __init__(self, board):
        self.read_since = type("Method", (), {"remote": staticmethod(lambda first: board.read_since(first))})


def test_a_log_gets_a_line_only_when_something_changed(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)
    board, log = ProgressBoard(), io.StringIO()
    printer = ProgressPrinter(_Remote(board), stream=log, quiet_interval_s=0.01)
    assert not printer.interactive and printer.interval_s == 0.01
    with printer:
        board.post(PROGRESS)
        import time

        time.sleep(0.2)  # ~20 polls of an unchanged board
        board.post({**PROGRESS, "step": 301})
        time.sleep(0.2)
    lines = log.getvalue().splitlines()
    assert [line.split(" step ")[1].split(" ")[0] for line in lines] == ["300/936", "301/936"]
    assert all(line.startswith("[progress] epoch 2/4") and "\r" not in line for line in lines)


def test_rank0s_lines_are_printed_once_each_as_they_come_and_not_when_verbose(monkeypatch):
    import time

    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)
    for show_lines in (True, False):
        board, log = ProgressBoard(), io.StringIO()
        # A bar interval longer than the test: only the lines (and the final bar at exit) are drawn.
        with ProgressPrinter(_Remote(board), stream=log, quiet_interval_s=60, show_lines=show_lines):
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


def test_only_the_first_worker_group_of_a_driver_claims_its_start_up():
    board = ProgressBoard()
    assert board.claim_startup() is True
    assert board.claim_startup() is False  # a group Ray restarted after a failure
