"""Collectives for statistics that feed a loss. Each is the identity when no process group exists.

A plain ``torch.distributed.all_gather`` has no backward: gradients would flow only into the local shard of a
global statistic, and the other workers' contributions would be lost. ``all_gather_with_grad`` sums the
incoming gradient over workers in its backward, so that after DDP's gradient averaging every parameter gets
exactly the gradient of the global-batch objective (proved by tests/distributed/test_gradient_equivalence.py).
``all_reduce_with_grad`` does the same for sums of per-worker statistics (the sharded objective's sufficient
statistics): its backward is the all-reduced sum of the incoming gradients.
Shards must have equal sizes on every worker (training loaders drop the last partial batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.num_local = local.shape[0]
        shards = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, local.contiguous())
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad_global: torch.Tensor) -> torch.Tensor:
        # Every worker's loss depends on every shard: the gradient of the sum of all workers' losses with
        # respect to this worker's shard is the sum over workers of their gradients for this slice.
        grad_global = grad_global.contiguous()
        dist.all_reduce(grad_global, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.num_local
        return grad_global[start : start + ctx.num_local]


def all_gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's ``local`` along dim 0 (rank order), differentiably."""
    if not is_distributed():
        return local
    return _AllGatherWithGrad.apply(local)


class _AllReduceSumWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        total = local.detach().clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> torch.Tensor:
        # Every worker's loss depends on the sum, hence on every worker's term: this worker's term gets the
        # sum over workers of their gradients with respect to the sum.
        grad_total = grad_total.clone().contiguous()
        dist.all_reduce(grad_total, op=dist.ReduceOp.SUM)
        return grad_total


def all_reduce_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Sum of every worker's ``local`` (same shape and dtype everywhere), differentiably; never modifies ``local``."""
    if not is_distributed():
        return local
    return _AllReduceSumWithGrad.apply(local)


@torch.no_grad()
def all_gather_no_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every worker's ``local`` along dim 0 (rank order); no gradient (evaluation banks)."""
    if not is_distributed():
        return local
    shards = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shards, local.contiguous())
    return torch.cat(shards, dim=0)


@torch.no_grad()
def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over workers of a detached tensor (logging of per-worker terms)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


@torch.no_grad()
def broadcast_from(value: torch.Tensor, src: int) -> torch.Tensor:
    """Rank ``src``'s value on every worker (every rank passes a tensor of the same shape and dtype)."""
    if not is_distributed():
        return value
    value = value.detach().clone().contiguous()
    dist.broadcast(value, src=src)
    return value


def send_to(tensors: list[torch.Tensor], dst: int, device) -> None:
    """Point-to-point: ``tensors`` (any shapes) to rank ``dst``, which calls ``receive_from`` with the same
    count; no other rank takes part. Shapes and dtypes travel first, so the receiver need not know them."""
    header = [float(len(tensors))]
    for t in tensors:
        header += [float(_DTYPES.index(t.dtype)), float(t.dim()), *map(float, t.shape)]
    header_tensor = torch.tensor(header, dtype=torch.float64, device=device)
    dist.send(torch.tensor([float(header_tensor.numel())], dtype=torch.float64, device=device), dst)
    dist.send(header_tensor, dst)
    for t in tensors:
        dist.send(t.detach().to(device).contiguous(), dst)


def receive_from(src: int, device) -> list[torch.Tensor]:
    """What rank ``src`` passed to ``send_to`` (on ``device``)."""
    length = torch.zeros(1, dtype=torch.float64, device=device)
    dist.recv(length, src)
    header = torch.zeros(int(length.item()), dtype=torch.float64, device=device)
    dist.recv(header, src)
    values, position, received = header.tolist(), 1, []
    for _ in range(int(values[0])):
        dtype, ndim = _DTYPES[int(values[position])], int(values[position + 1])
        shape = [int(v) for v in values[position + 2: position + 2 + ndim]]
        position += 2 + ndim
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(tensor, src)
        received.append(tensor)
    return received


_DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32, torch.bfloat16, torch.float16]


def broadcast_from_rank0(value: torch.Tensor) -> torch.Tensor:
    """Rank 0's value on every worker, bit for bit (keeps α identical even if SVDs differ in the last ulp)."""
    return broadcast_from(value, 0)
