"""Process-group aware pieces: autograd-aware collectives (gather, sum) and the DDP / DeepSpeed engines."""

from .collectives import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_mean,
    all_reduce_with_grad,
    broadcast_from,
    broadcast_from_rank0,
    is_distributed,
    rank,
    receive_from,
    send_to,
    world_size,
)

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_with_grad",
    "broadcast_from",
    "broadcast_from_rank0",
    "is_distributed",
    "rank",
    "receive_from",
    "send_to",
    "world_size",
]
