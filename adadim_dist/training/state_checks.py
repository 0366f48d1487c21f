"""Checks on a worker's training state that every rank must agree on (collectives), and the fingerprint that
shows an exact restore."""

from __future__ import annotations

import math

import torch

from ..distributed import all_gather_objects, all_reduce_mean


class NonFiniteLossError(RuntimeError):
    """A loss or gradient went NaN/Inf; retrying from the same checkpoint would fail the same way."""


def state_is_finite(state: dict[str, torch.Tensor]) -> bool:
    """Parameters *and* buffers: a diverged forward pass moves BatchNorm's running statistics too."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def state_is_finite_on_every_rank(state: dict[str, torch.Tensor], device) -> bool:
    """Whether every rank's state is finite (a collective): each rank's BatchNorm statistics are its own under
    per-worker BatchNorm, and ranks that decided alone would part ways (one saving, one stopping: a hang)."""
    finite = torch.tensor([float(state_is_finite(state))], device=device)
    return all_reduce_mean(finite).item() == 1.0


def step_is_finite_on_every_rank(loss: torch.Tensor, gradients_finite: bool, device) -> bool:
    """Whether the step's loss and gradients are finite on every rank (a collective, on the step's device:
    NCCL reduces CUDA tensors only)."""
    finite = torch.tensor([float(torch.isfinite(loss)) * float(gradients_finite)], device=device)
    return all_reduce_mean(finite).item() == 1.0


def parameter_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Sum of every floating-point entry of a state dict in float64: equal after an exact restore."""
    total = sum(v.double().sum().item() for v in state.values() if v.is_floating_point())
    return f"{total:.12e}"


def union_over_ranks(names: list[str], world_size: int) -> list[str]:
    """The sorted union of every rank's ``names`` (a collective: every rank calls it)."""
    if world_size == 1:
        return sorted(names)
    return sorted(set().union(*all_gather_objects(names)))


def non_finite_terms(objective, r_a, r_b, z_a, z_b) -> list[str]:
    """The objective's terms that are not finite on this step's embeddings, computed again; α's state is left
    as the step set it."""
    saved = objective.state_dict()
    with torch.no_grad():
        _, stats = objective(r_a.detach(), r_b.detach(), z_a.detach(), z_b.detach(), with_stats=True)
    objective.load_state_dict(saved)
    return [k for k, v in stats.items() if not math.isfinite(float(v))]
