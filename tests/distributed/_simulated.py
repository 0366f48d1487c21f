"""W workers' all-reduces simulated in one process: checks the sharded estimators' *values* for any W without
spawning processes (gradients need real processes: tests/distributed/test_gradient_equivalence.py)."""

from __future__ import annotations

from typing import Callable

import torch


def run_shards(fn: Callable[[int, Callable[[torch.Tensor], torch.Tensor]], object], num_shards: int) -> list:
    """``fn(shard, all_reduce)`` for every shard, where the i-th ``all_reduce`` call of each shard returns the sum
    over shards of their i-th inputs, as a real all-reduce would. ``fn`` must make the same sequence of calls
    on every shard. Works by replay: each pass runs every shard up to the first call whose sum is not yet
    known (earlier calls return known sums, that one returns its input as a stand-in), then sums it."""
    totals: list[torch.Tensor] = []
    while True:
        inputs: list[list[torch.Tensor]] = [[] for _ in range(num_shards)]
        results = []
        for shard in range(num_shards):
            def all_reduce(x: torch.Tensor, calls: list = inputs[shard]) -> torch.Tensor:
                calls.append(x.detach().clone())
                return totals[len(calls) - 1] if len(calls) <= len(totals) else x.detach().clone()

            results.append(fn(shard, all_reduce))
        counts = {len(calls) for calls in inputs}
        if len(counts) != 1:
            raise AssertionError(f"shards made different numbers of all_reduce calls: {sorted(counts)}")
        if counts.pop() == len(totals):
            return results
        totals.append(torch.stack([calls[len(totals)] for calls in inputs]).sum(dim=0))
