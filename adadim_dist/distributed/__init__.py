"""Process-group aware pieces: autograd-aware collectives (gather, sum) and the DDP / DeepSpeed engines."""

from .collectives import (
    all_gather_objects,
    all_gather_rows,
    all_gather_with_grad,
    all_reduce_mean,
    all_reduce_with_grad,
    broadcast_from,
    broadcast_from_rank0,
    broadcast_object,
    gather_to,
    is_distributed,
    object_to,
    rank,
    release_lone_process_group,
    world_size,
)

__all__ = [
    "all_gather_objects",
    "all_gather_rows",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_with_grad",
    "broadcast_from",
    "broadcast_from_rank0",
    "broadcast_object",
    "gather_to",
    "is_distributed",
    "object_to",
    "rank",
    "release_lone_process_group",
    "world_size",
]
