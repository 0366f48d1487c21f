"""CPU workers pinned to cores of their own: when it is safe, which cores, and that every thread follows."""

import os
import subprocess
import sys
import textwrap

import pytest

from adadim_dist.config import load_config
from adadim_dist.training.placement import worker_cores
from adadim_dist.training.tracking import describe_layout


@pytest.mark.parametrize(
    "allowed, local_rank, workers, cpus, node_cpus, expected",
    [
        ([0, 1], 0, 2, 1, 2, [0]),  # the demo: 2 workers × 1 CPU on 2 cores
        ([0, 1], 1, 2, 1, 2, [1]),
        ([4, 5, 2, 3], 1, 2, 2, 4, [4, 5]),  # the process's own cores, in order, not 0..n-1
        ([0, 1, 2, 3, 4, 5, 6, 7], 1, 2, 2, 4, [2, 3]),  # Ray offers 4 of 8 cores, the workers hold all 4
        ([0, 1], 0, 1, 2, 2, None),  # one worker: nothing to separate
        ([0, 1], 0, 2, 0.5, 2, None),  # fractional CPUs share cores by design
        ([0, 1, 2, 3], 0, 2, 1, 4, None),  # other Ray work may hold the other 2 CPUs
        ([0], 0, 2, 1, 2, None),  # fewer cores than the CPUs Ray counts
        ([0, 1], 2, 2, 1, 2, None),  # a local rank beyond the node's workers
    ],
)
def test_worker_cores_only_where_the_workers_hold_every_cpu_of_the_node(allowed, local_rank, workers, cpus,
                                                                         node_cpus, expected):
    assert worker_cores(allowed, local_rank, workers, cpus, node_cpus) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_pinning_moves_every_thread_of_the_process_and_threads_started_later():
    """In a fresh process (pinning this one would pin the test run): a thread started before the pin and one
    started after it, and torch's own threads, all end up on the chosen core."""
    core = sorted(os.sched_getaffinity(0))[-1]
    script = textwrap.dedent(f"""
        import os, threading, time, torch
        from adadim_dist.training.placement import pin_process
        stop = threading.Event()
        before = threading.Thread(target=stop.wait); before.start()
        torch.set_num_threads(2); torch.randn(512, 512) @ torch.randn(512, 512)  # start torch's threads
        assert pin_process([{core}])
        after = threading.Thread(target=stop.wait); after.start()
        masks = {{tid: os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}}
        stop.set()
        print(len(masks), sorted({{tuple(sorted(m)) for m in masks.values()}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0, result.stderr[-2000:]
    threads, masks = result.stdout.split(" ", 1)
    assert int(threads) >= 3 and masks.strip() == f"[({core},)]", result.stdout


def test_layout_tag_says_when_workers_were_pinned():
    training = load_config(None, ["training.num_workers=2", "training.cpus_per_worker=1"]).training
    assert describe_layout(2, training, pinned=True) == "2 workers × 1 CPU, pinned"
    assert describe_layout(2, training) == "2 workers × 1 CPU"
