"""Distributed correctness of the AdaDim objective on 2 and 4 real gloo processes (SPEC §2), in both forms.

One spawn per world size runs every case; the tests below read its results.
"""

import pytest
import torch

from ._harness import run_ranks
from .workers import EQUIVALENCE_CASES, FORMS, NUM_STEPS, equivalence_worker, reference_runs

pytestmark = pytest.mark.distributed

WORLD_SIZES = (2, 4)
TOLERANCE = 1e-6  # relative, float64


@pytest.fixture(scope="module")
def reference():
    return reference_runs()


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=[f"W{w}" for w in WORLD_SIZES])
def ranks(request, tmp_path_factory):
    world_size = request.param
    out_dir = tmp_path_factory.mktemp(f"equivalence_w{world_size}")
    run_ranks(equivalence_worker, world_size, (str(out_dir),))
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def test_collective_backwards_sum_over_workers(ranks):
    """A plain all_gather / all_reduce (no backward) or a backward without all-reduce gives W times too little."""
    world_size = len(ranks)
    values = torch.arange(1, world_size + 1, dtype=torch.float64)
    for rank, result in enumerate(ranks):
        for size, collectives in result["collectives"].items():
            rows = collectives["rows"]
            expected_gathered = torch.cat([torch.full((rows, 2), float(v)) for v in values]).double()
            assert torch.equal(collectives["gathered"], expected_gathered), size
            expected_gather_grad = torch.full((rows, 2), 2.0 * world_size * (rank + 1)).double()
            assert torch.allclose(collectives["gather_grad"], expected_gather_grad), size
            assert torch.equal(collectives["summed"], torch.full((rows, 2), values.sum().item()).double()), size
            expected_sum_grad = torch.full((rows, 2), 2.0 * world_size * values.sum()).double()
            assert torch.allclose(collectives["sum_grad"], expected_sum_grad), size
            assert collectives["input_untouched"], size


@pytest.mark.parametrize("compute", FORMS)
@pytest.mark.parametrize("case", [name for name, _, _ in EQUIVALENCE_CASES])
def test_workers_match_one_process_on_the_whole_batch(ranks, reference, case, compute):
    """Per-worker AdaDim on 1/W of the batch, gradients averaged as DDP does, equals one process on the whole
    batch: every gradient, loss term (averaged over workers) and statistic (on every worker), float64, rel.
    error < 1e-6; α bit-identical on all ranks. Catches a non-differentiable collective, a term computed on
    the local batch only, a 1/W rescaling, a wrong row offset, a statistic left per-worker."""
    expected = reference[case, compute]
    alphas = [[step["adadim/alpha"] for step in r[case, compute]["stats"]] for r in ranks]
    assert all(a == alphas[0] for a in alphas), "α differs between ranks"  # bit-identical floats
    for step in range(NUM_STEPS):
        want = expected["grads"][step]
        for rank, result in enumerate(ranks):
            got = result[case, compute]["grads"][step]
            relative_error = ((got - want).norm() / want.norm()).item()
            assert relative_error < TOLERANCE, f"step {step} rank {rank}: gradient rel. error {relative_error:.2e}"
            got_stats, want_stats = result[case, compute]["stats"][step], expected["stats"][step]
            assert got_stats.keys() == want_stats.keys()
            for key, value in want_stats.items():
                assert got_stats[key] == pytest.approx(value, rel=TOLERANCE, abs=1e-12), f"step {step} {key}"
