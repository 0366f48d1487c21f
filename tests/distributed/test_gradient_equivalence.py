"""Distributed correctness of the AdaDim objective on 2 real gloo processes (SPEC §2)."""

import pytest
import torch

from adadim_dist.objectives.adadim import _identity

from ._harness import run_distributed
from .workers import adadim_gradients, gather_gradient_worker, gradient_equivalence_worker, make_problem

pytestmark = pytest.mark.distributed


def test_gather_backward_sums_over_workers(tmp_path):
    """A plain all_gather (no backward) or a backward without all-reduce gives 2·x instead of 2·W·x."""
    run_distributed(gather_gradient_worker, 2, (str(tmp_path),))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        expected_gathered = torch.cat([torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)]).double()
        assert torch.equal(result["gathered"], expected_gathered)
        assert torch.allclose(result["grad"], torch.full((3, 2), 2.0 * 2 * (rank + 1)).double())


def test_two_workers_match_one_process_on_the_whole_batch(tmp_path):
    """Per-worker AdaDim (VICReg + NT-Xent + MI, adaptive α) on half batches, gradients averaged as DDP does,
    equals one process on the whole batch (float64, rel. error < 1e-6), and α is bit-identical on both ranks.
    Catches: a non-differentiable gather, a term computed on the local batch only, a 1/W rescaling."""
    run_distributed(gradient_equivalence_worker, 2, (str(tmp_path),))
    encoder, projector, x_a, x_b = make_problem()
    reference_grads, reference_alphas = adadim_gradients(x_a, x_b, encoder, projector, _identity, _identity)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["alphas"] == ranks[1]["alphas"]  # bit-identical floats
    assert ranks[0]["alphas"] == pytest.approx(reference_alphas, rel=1e-12)
    for step, reference in enumerate(reference_grads):
        for result in ranks:
            got = result["grads"][step]
            relative_error = (got - reference).norm() / reference.norm()
            assert relative_error < 1e-6, f"step {step}: relative error {relative_error:.2e}"
