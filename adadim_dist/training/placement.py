"""CPU workers on cores of their own.

Ray counts a worker's CPUs but places it on no particular core: the OS moves every worker's compute, loader and
gloo threads across all of the node's cores, one worker's threads preempt another's, and each collective then
waits for whichever worker was preempted last. When the job's workers on a node hold every CPU that Ray offers
there, no other Ray task can be given those CPUs, and the worker of local rank i pins its threads to cores
[i·c, (i+1)·c) of the ones the process may use (c = ``training.cpus_per_worker``). With the demo's 2 workers
on 2 cores this took the service from 0.925-0.930 to 0.944 of a plain loop's speed (BENCHMARKS.md, "Service
against a plain loop"). GPU workers, fractional CPUs, a single worker on the node, or workers sharing the node
with other Ray work keep the OS's placement.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def worker_cores(allowed: list[int], local_rank: int, workers_on_node: int, cpus_per_worker: float,
                 node_cpus: float) -> list[int] | None:
    """The cores the worker of ``local_rank`` pins itself to, or None where pinning could collide with other
    work or has nothing to separate. ``allowed``: the cores this process may use; ``node_cpus``: the CPUs Ray
    offers on the node."""
    if workers_on_node < 2 or cpus_per_worker < 1 or cpus_per_worker != int(cpus_per_worker):
        return None
    per_worker = int(cpus_per_worker)
    held = workers_on_node * per_worker
    if held != node_cpus or len(allowed) < held or not 0 <= local_rank < workers_on_node:
        return None
    cores = sorted(allowed)
    return cores[local_rank * per_worker : (local_rank + 1) * per_worker]


def pin_process(cores: list[int]) -> bool:
    """Pin every thread of this process (those started later inherit it) to ``cores``; False where the platform
    cannot (no ``sched_setaffinity``, as on macOS) or refuses."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        for thread in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(thread), cores)
            except ProcessLookupError:  # the thread ended meanwhile
                pass
    except OSError as err:
        logger.warning("[adadim] could not pin this worker to cores %s (%s): the OS places its threads", cores, err)
        return False
    return True


def pin_cpu_worker(context, cpus_per_worker: float, use_gpu: bool) -> list[int] | None:
    """Pin this Ray Train worker (``context``: ``ray.train.get_context()``) to cores of its own where
    ``worker_cores`` allows it; the cores, or None."""
    if use_gpu or not hasattr(os, "sched_getaffinity"):
        return None
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node_cpus = next((node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node["NodeID"] == node_id), 0)
    cores = worker_cores(list(os.sched_getaffinity(0)), context.get_local_rank(), context.get_local_world_size(),
                         cpus_per_worker, node_cpus)
    return cores if cores is not None and pin_process(cores) else None
