"""Functions run on every rank by the distributed tests (importable, so spawn can pickle them)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from adadim_dist.distributed import all_gather_with_grad, broadcast_from_rank0
from adadim_dist.objectives import AdaDim


def make_problem(global_batch: int = 16, seed: int = 0):
    """A tiny encoder + projector and a fixed global batch of two views, in float64."""
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(10, 12, dtype=torch.float64), torch.nn.Tanh())
    projector = torch.nn.Sequential(
        torch.nn.Linear(12, 12, dtype=torch.float64), torch.nn.ReLU(), torch.nn.Linear(12, 8, dtype=torch.float64)
    )
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(global_batch, 10, generator=g, dtype=torch.float64)
    x_a = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_b = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return encoder, projector, x_a, x_b


def adadim_gradients(x_a, x_b, encoder, projector, gather, sync, num_steps: int = 2):
    """Gradients of the full AdaDim loss (VICReg + NT-Xent + MI, adaptive α) over a few steps.

    Several steps make the comparison cover the α state as well; the parameters are not updated so every
    step sees the same weights. Returns (list of flattened gradients per step, list of α per step).
    """
    objective = AdaDim(alpha_mode="adaptive", mi_sign="maximize", gamma=1.0, gather=gather, sync=sync)
    params = list(encoder.parameters()) + list(projector.parameters())
    grads, alphas = [], []
    for step in range(num_steps):
        shift = 0.05 * step
        r_a, r_b = encoder(x_a + shift), encoder(x_b - shift)
        loss, stats = objective(r_a, r_b, projector(r_a), projector(r_b), with_stats=False)
        step_grads = torch.autograd.grad(loss, params)
        grads.append(torch.cat([g.reshape(-1) for g in step_grads]))
        alphas.append(stats["adadim/alpha"])
        objective.step()
    return grads, alphas


def gradient_equivalence_worker(rank: int, world_size: int, out_dir: str) -> None:
    encoder, projector, x_a, x_b = make_problem()
    shard = slice(rank * len(x_a) // world_size, (rank + 1) * len(x_a) // world_size)
    grads, alphas = adadim_gradients(x_a[shard], x_b[shard], encoder, projector,
                                     all_gather_with_grad, broadcast_from_rank0)
    averaged = []
    for g in grads:  # what DDP does: mean of the per-worker gradients
        g = g.clone()
        dist.all_reduce(g)
        averaged.append(g / world_size)
    torch.save({"grads": averaged, "alphas": alphas}, Path(out_dir, f"rank{rank}.pt"))


def gather_gradient_worker(rank: int, world_size: int, out_dir: str) -> None:
    """d/dx of Σ_workers Σ gather(x)² is 2·W·x: the backward must sum over workers."""
    x = torch.full((3, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
    gathered = all_gather_with_grad(x)
    gathered.pow(2).sum().backward()
    torch.save({"gathered": gathered.detach(), "grad": x.grad}, Path(out_dir, f"rank{rank}.pt"))
