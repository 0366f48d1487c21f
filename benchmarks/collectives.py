"""The collectives of a CPU training step between two gloo workers: gloo's ring collectives against the
pairwise exchanges (``all_to_all``) that ``adadim_dist/distributed/collectives.py`` uses on gloo.

Two processes, one torch thread each (the demo's layout), at the sizes of the demo's step
(``configs/fmnist_smoke.yaml``: 128 rows per worker, Z and R of both views 4 × 512 wide): the gather of Z and R,
its backward (each worker needs the sum of its own rows' gradients), and sums over workers from 4 KiB (the
objective's sums with VICReg's covariance from row-Gram blocks) to 2 MiB (the D×D form's), which sets
``DIRECT_SUM_MAX_BYTES``. Both variants alternate after the same warm-up; medians of rank 0's timings.

    python benchmarks/collectives.py [--calls 100]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from _common import alternating_medians, emit, free_port
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit, free_port
from adadim_dist.distributed.collectives import _gather_equal_rows, _pairwise_sum, _sum_own_rows

ROWS, WIDTH = 128, 4 * 512
SUM_KIB = (4, 64, 256, 1024, 2048)


def ring_gather(local: torch.Tensor) -> torch.Tensor:
    shards = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, local)
    return torch.cat(shards)


def ring_sum_own_rows(grad_global: torch.Tensor, num_local: int) -> torch.Tensor:
    grad_global = grad_global.clone()
    dist.all_reduce(grad_global)
    start = dist.get_rank() * num_local
    return grad_global[start : start + num_local]


def ring_sum(local: torch.Tensor) -> torch.Tensor:
    total = local.clone()
    dist.all_reduce(total)
    return total


def worker(rank: int, port: int, calls: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    local = torch.randn(ROWS, WIDTH)
    grad_global = torch.randn(2 * ROWS, WIDTH)
    cases = {
        f"gather {ROWS}×{WIDTH} per worker": (lambda: ring_gather(local), lambda: _gather_equal_rows(local)),
        f"gather backward {2 * ROWS}×{WIDTH}": (lambda: ring_sum_own_rows(grad_global, ROWS),
                                                lambda: _sum_own_rows(grad_global, ROWS)),
    }
    for kib in SUM_KIB:
        values = torch.randn(kib * 256)
        cases[f"sum {kib} KiB"] = (lambda v=values: ring_sum(v), lambda v=values: _pairwise_sum(v))
    results = {}
    for name, (ring, pairwise) in cases.items():
        medians = alternating_medians({"ring": ring, "pairwise": pairwise}, timed=calls, warmup=10)
        results[name] = {"ring_ms": round(medians["ring"] * 1e3, 3),
                         "pairwise_ms": round(medians["pairwise"] * 1e3, 3),
                         "speedup": round(medians["ring"] / medians["pairwise"], 2)}
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, port, args.calls, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = queue.get(timeout=600)
    for process in processes:
        process.join()
    emit({"benchmark": "collectives", "workers": 2, "threads_per_worker": 1, "results": results})


if __name__ == "__main__":
    main()
