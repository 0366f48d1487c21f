"""Collectives for statistics that feed a loss. Each is the identity when no process group exists.

A plain ``torch.distributed.all_gather`` has no backward: gradients would flow only into the local shard of a
global statistic, and the other workers' contributions would be lost. ``all_gather_with_grad`` sums the
incoming gradient over workers in its backward, so that after DDP's gradient averaging every parameter gets
exactly the gradient of the global-batch objective (proved by tests/distributed/test_gradient_equivalence.py).
``all_reduce_with_grad`` does the same for sums of per-worker statistics (the sharded objective's sufficient
statistics): its backward is the all-reduced sum of the incoming gradients.
Shards must have equal sizes on every worker (training loaders drop the last partial batch).

On gloo (CPU) both move their data in one pairwise exchange (``all_to_all``) where gloo's ring collectives
take several round trips: the gather, its backward (each worker receives only its own rows' gradients, a
reduce-scatter) and sums of up to ``DIRECT_SUM_MAX_BYTES`` are 1.2-2.2× faster between two CPU workers
(benchmarks/collectives.py). Every worker adds the received shards in rank order, so all get the same bits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def release_lone_process_group() -> None:
    """Destroy a process group of one. A one-worker job never communicates, yet Ray Train starts a group for it
    (and leaves groups of one alone at shutdown); gloo's keeps a loop thread that wakes every 10 ms, and a store
    thread, for the whole job: on a machine whose cores all train, each wake-up preempts a training thread."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() == 1:
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


#: Sums of up to this many bytes sent to all other workers go through one pairwise exchange on gloo. Between
#: two CPU workers it wins up to 1 MiB (4 KiB 0.37 → 0.29 ms, 256 KiB 0.74 → 0.62, 1 MiB 2.15 → 1.68) and
#: gloo's ring, which moves fewer bytes, wins at 2 MiB (benchmarks/collectives.py); 256 KiB keeps a margin.
DIRECT_SUM_MAX_BYTES = 256 * 1024


def _exchanges_pairwise(tensor: torch.Tensor) -> bool:
    """CPU tensors on gloo (alone, or as the CPU half of a "cpu:gloo,cuda:nccl" group); NCCL keeps its own."""
    return tensor.device.type == "cpu" and "gloo" in str(dist.get_backend())


def _exchange_rows(local: torch.Tensor) -> torch.Tensor:
    """Every worker's ``local`` stacked along dim 0 in rank order, in one pairwise exchange (``all_to_all``)."""
    world = dist.get_world_size()
    gathered = local.new_empty((world * local.shape[0], *local.shape[1:]))
    dist.all_to_all_single(gathered, local.repeat(world, *([1] * (local.dim() - 1))))
    return gathered


def _gather_equal_rows(local: torch.Tensor) -> torch.Tensor:
    local = local.contiguous()
    if _exchanges_pairwise(local):
        return _exchange_rows(local)
    shards = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, local)
    return torch.cat(shards, dim=0)


def _sum_own_rows(grad_global: torch.Tensor, num_local: int) -> torch.Tensor:
    """Σ over workers of their ``grad_global`` rows that belong to this worker (a reduce-scatter)."""
    world = dist.get_world_size()
    grad_global = grad_global.contiguous()
    if _exchanges_pairwise(grad_global):
        received = torch.empty_like(grad_global)
        dist.all_to_all_single(received, grad_global)  # worker k's slice for this rank, in rank order
        return received.view(world, num_local, *grad_global.shape[1:]).sum(dim=0)
    dist.all_reduce(grad_global, op=dist.ReduceOp.SUM)
    start = dist.get_rank() * num_local
    return grad_global[start : start + num_local]


def _pairwise_sum(local: torch.Tensor) -> torch.Tensor:
    """Σ over workers of ``local``, each worker sending all of it to every other."""
    return _exchange_rows(local.detach()[None]).sum(dim=0)


def _sum_over_workers(local: torch.Tensor) -> torch.Tensor:
    """A new tensor: Σ over workers of ``local``."""
    world = dist.get_world_size()
    if _exchanges_pairwise(local) and local.numel() * local.element_size() * (world - 1) <= DIRECT_SUM_MAX_BYTES:
        return _pairwise_sum(local)
    total = local.detach().clone().contiguous()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.num_local = local.shape[0]
        return _gather_equal_rows(local)

    @staticmethod
    def backward(ctx, grad_global: torch.Tensor) -> torch.Tensor:
        # Every worker's loss depends on every shard: the gradient of the sum of all workers' losses with
        # respect to this worker's shard is the sum over workers of their gradients for this slice.
        return _sum_own_rows(grad_global, ctx.num_local)


def all_gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's ``local`` along dim 0 (rank order), differentiably."""
    if not is_distributed():
        return local
    return _AllGatherWithGrad.apply(local)


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        return _sum_over_workers(local)

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> torch.Tensor:
        # Every worker's loss depends on the sum, hence on every worker's term: this worker's term gets the
        # sum over workers of their gradients with respect to the sum.
        return _sum_over_workers(grad_total)


def all_reduce_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Sum of every worker's ``local`` (same shape and dtype everywhere), differentiably; never modifies ``local``."""
    if not is_distributed():
        return local
    return _AllReduceSumWithGrad.apply(local)


@torch.no_grad()
def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over workers of a detached tensor (logging of per-worker terms)."""
    if not is_distributed():
        return value
    return _sum_over_workers(value.detach()) / dist.get_world_size()


@torch.no_grad()
def broadcast_from(value: torch.Tensor, src: int) -> torch.Tensor:
    """Rank ``src``'s value on every worker (every rank passes a tensor of the same shape and dtype)."""
    if not is_distributed():
        return value
    value = value.detach().clone().contiguous()
    dist.broadcast(value, src=src)
    return value


@torch.no_grad()
def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's ``local`` along dim 0 (rank order) when the row counts differ between workers
    (evaluation parts); the other dimensions and the dtype must agree. No gradient."""
    if not is_distributed():
        return local
    counts = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device))
    rows = [int(count.item()) for count in counts]
    padded = local.new_zeros((max(rows), *local.shape[1:]))
    padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(shards, padded.contiguous())
    return torch.cat([shard[:count] for shard, count in zip(shards, rows)], dim=0)


@torch.no_grad()
def gather_to(local: torch.Tensor, dst: int) -> list[torch.Tensor] | None:
    """Every worker's ``local`` (same shape and dtype everywhere) on rank ``dst``, in rank order; None on the
    other ranks, which only send."""
    if not is_distributed():
        return [local]
    local = local.contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())] if dist.get_rank() == dst else None
    dist.gather(local, parts, dst=dst)
    return parts


def object_to(obj, src: int, dst: int):
    """Rank ``src``'s picklable ``obj`` on rank ``dst`` (a collective: every rank calls it; the others pass and
    get None). For one-off payloads of any size, e.g. files that one rank wrote while the others were busy."""
    if not is_distributed() or src == dst:
        return obj
    # gather_object pickles each rank's value; only src's is large, the others send None.
    received = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj if dist.get_rank() == src else None, received, dst=dst)
    return received[src] if received is not None else None


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (a collective: the others pass anything)."""
    if not is_distributed():
        return obj
    holder = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_rank0(value: torch.Tensor) -> torch.Tensor:
    """Rank 0's value on every worker, bit for bit (keeps α identical even if SVDs differ in the last ulp)."""
    return broadcast_from(value, 0)
