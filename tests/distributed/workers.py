"""Functions run on every rank by the distributed tests (importable, so spawn can pickle them)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from adadim_dist.distributed import all_gather_with_grad, all_reduce_with_grad, broadcast_from_rank0
from adadim_dist.distributed.collectives import DIRECT_SUM_MAX_BYTES
from adadim_dist.objectives import AdaDim

# (name, AdaDim options, projector output width D). Global batch N = 16. With D = 20 > N the sharded α comes
# from the gathered N×N ZZᵀ on 1 and 2 processes and from the all-reduced D×D ZᵀZ (of which only min(N, D)
# eigenvalues are singular values) on 4; with D = 8 always from ZᵀZ. The last two cases keep I(R;Z) on the
# gathered path (median-heuristic width, order ≠ 2).
EQUIVALENCE_CASES = [
    ("vicreg_cosine", {"dim_loss": "vicreg"}, 8),
    # D ≥ N: the sharded covariance from blocks of the row Gram matrix instead of the D×D sums (Barlow Twins'
    # cross-correlation likewise in the wide cases below).
    ("vicreg_wide", {"dim_loss": "vicreg"}, 20),
    ("barlow_twins_wide", {"dim_loss": "barlow_twins"}, 20),
    # D < N: the cross-correlation from the D×D sums (D ≥ N above: from row-Gram blocks).
    ("barlow_twins_narrow", {"dim_loss": "barlow_twins"}, 8),
    ("gaussian_fixed_width", {"kernel": "gaussian", "kernel_sigma": 0.8, "mi_sign": "minimize"}, 8),
    ("gaussian_median_width", {"kernel": "gaussian"}, 8),
    ("order_3", {"mi_order": 3.0}, 8),
    # balance=running_mean: the scales are all-reduced global values and part of the state carried over steps.
    ("vicreg_balanced", {"balance": "running_mean", "balance_momentum": 0.5}, 8),
    ("barlow_twins_balanced_mi_min", {"dim_loss": "barlow_twins", "balance": "running_mean", "mi_sign": "minimize"},
     20),
]
FORMS = ("sharded", "replicated")
# α re-estimated on steps 0 and 2 (EMA-smoothed), statistics on steps 0 (erank(Z) from α's estimate) and 1
# (computed for the statistics alone), none on step 2: every path through the objective.
NUM_STEPS, ALPHA_INTERVAL, WITH_STATS = 3, 2, (True, True, False)


def make_problem(global_batch: int = 16, out_dim: int = 8, seed: int = 0):
    """A tiny encoder + projector and a fixed global batch of two views, in float64."""
    torch.manual_seed(seed)
    encoder = torch.nn.Sequential(torch.nn.Linear(10, 12, dtype=torch.float64), torch.nn.Tanh())
    projector = torch.nn.Sequential(
        torch.nn.Linear(12, 12, dtype=torch.float64), torch.nn.ReLU(),
        torch.nn.Linear(12, out_dim, dtype=torch.float64),
    )
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(global_batch, 10, generator=g, dtype=torch.float64)
    x_a = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_b = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return encoder, projector, x_a, x_b


def adadim_run(x_a, x_b, encoder, projector, options: dict, compute: str, gather=None, all_reduce=None,
               sync=None, rank: int = 0) -> dict:
    """Gradients of the full AdaDim loss (adaptive α) and its statistics over a few steps.

    Several steps make the comparison cover the α state as well; the parameters are not updated so every
    step sees the same weights. Returns {"grads": [flat gradient per step], "stats": [{key: float} per step]}.
    """
    collectives = {k: v for k, v in (("gather", gather), ("all_reduce", all_reduce), ("sync", sync)) if v}
    objective = AdaDim(alpha_mode="adaptive", alpha_interval=ALPHA_INTERVAL, alpha_ema=0.5, gamma=1.0,
                       compute=compute, rank=rank, **collectives, **options)
    params = list(encoder.parameters()) + list(projector.parameters())
    grads, stats = [], []
    for step in range(NUM_STEPS):
        shift = 0.05 * step
        r_a, r_b = encoder(x_a + shift), encoder(x_b - shift)
        loss, step_stats = objective(r_a, r_b, projector(r_a), projector(r_b), with_stats=WITH_STATS[step])
        step_grads = torch.autograd.grad(loss, params)
        grads.append(torch.cat([g.reshape(-1) for g in step_grads]))
        stats.append({k: float(v) for k, v in step_stats.items()})
        objective.step()
    return {"grads": grads, "stats": stats}


def reference_runs() -> dict:
    """One process on the whole batch, every case and form."""
    runs = {}
    for name, options, out_dim in EQUIVALENCE_CASES:
        encoder, projector, x_a, x_b = make_problem(out_dim=out_dim)
        for compute in FORMS:
            runs[name, compute] = adadim_run(x_a, x_b, encoder, projector, options, compute)
    return runs


def equivalence_worker(rank: int, world_size: int, out_dir: str) -> None:
    """Every case and form on this rank's shard; gradients averaged over ranks as DDP does, ``loss/*``
    statistics (this worker's share) averaged as the training loop logs them, ``info/*`` and α as they are."""
    results: dict = {"collectives": _collective_gradients(rank, world_size)}
    for name, options, out_dim in EQUIVALENCE_CASES:
        encoder, projector, x_a, x_b = make_problem(out_dim=out_dim)
        shard = slice(rank * len(x_a) // world_size, (rank + 1) * len(x_a) // world_size)
        for compute in FORMS:
            run = adadim_run(x_a[shard], x_b[shard], encoder, projector, options, compute,
                             all_gather_with_grad, all_reduce_with_grad, broadcast_from_rank0, rank)
            for step, grad in enumerate(run["grads"]):
                grad = grad.clone()
                dist.all_reduce(grad)
                run["grads"][step] = grad / world_size
            for step_stats in run["stats"]:
                for key in [k for k in step_stats if k.startswith("loss/")]:
                    value = torch.tensor(step_stats[key], dtype=torch.float64)
                    dist.all_reduce(value)
                    step_stats[key] = value.item() / world_size
            results[name, compute] = run
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))


def _collective_gradients(rank: int, world_size: int) -> dict:
    """Each rank's x = rank + 1. Σ_workers Σ gather(x)² has d/dx = 2·W·x; Σ_workers Σ all_reduce(x)² has
    d/dx = 2·W·Σ_workers x. A backward that does not sum over workers gives W times too little. Small tensors
    and one past ``DIRECT_SUM_MAX_BYTES`` (gloo exchanges the one pairwise, the other through its ring)."""
    results = {}
    for size, rows in (("small", 3), ("large", DIRECT_SUM_MAX_BYTES // 16 + 1)):  # float64 × 2 columns
        x = torch.full((rows, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        gathered = all_gather_with_grad(x)
        gathered.pow(2).sum().backward()
        y = torch.full((rows, 2), float(rank + 1), dtype=torch.float64, requires_grad=True)
        summed = all_reduce_with_grad(y)
        summed.pow(2).sum().backward()
        results[size] = {"rows": rows, "gathered": gathered.detach(), "gather_grad": x.grad,
                         "summed": summed.detach(), "sum_grad": y.grad,
                         "input_untouched": bool((y.detach() == rank + 1).all())}
    return results


def shared_evaluation_worker(rank: int, world_size: int, storage: str) -> None:
    """Every rank embeds its part of the bank and of the test set (parts of unequal size with 3 ranks); rank 0's
    kNN, probe and spectra must equal one process evaluating everything, and so must the baselines."""
    from adadim_dist.config import load_config
    from adadim_dist.distributed import all_gather_rows, gather_to, object_to
    from adadim_dist.models import build_model
    from adadim_dist.evaluation.baselines import baseline_knn, cached_baseline_knn
    from adadim_dist.evaluation.online import evaluate_labelled as evaluate
    from adadim_dist.evaluation.online import part_range, rank0_state

    rows = torch.arange(rank + 1, dtype=torch.float32).unsqueeze(1).expand(-1, 2)  # rank r holds r + 1 rows
    gathered = all_gather_rows(rows)
    assert gathered.shape == (world_size * (world_size + 1) // 2, 2)
    assert torch.equal(gathered[:, 0], torch.cat([torch.arange(r + 1.0) for r in range(world_size)]))
    parts = gather_to(torch.full((2,), float(rank)), dst=0)
    assert (parts is None) == (rank != 0)
    if rank == 0:
        assert [p.tolist() for p in parts] == [[float(r)] * 2 for r in range(world_size)]
    # The encoder's hand-over: the last rank's files (a few MB) reach rank 0 whole; the others get None.
    last = world_size - 1
    files = {"data/model.pt2": bytes(range(256)) * 20_000, "MLmodel": b"flavor"}
    handed = object_to(files if rank == last else None, src=last, dst=0)
    assert handed == (files if rank == 0 else None)
    # Per-worker BatchNorm statistics differ between ranks; evaluation uses rank 0's (integers stay local).
    state = rank0_state({"running_mean": torch.full((2,), float(rank)), "weight": torch.full((3,), rank + 0.5),
                         "steps": torch.tensor(rank)}, torch.device("cpu"))
    assert state["running_mean"].tolist() == [0.0, 0.0] and state["weight"].tolist() == [0.5] * 3
    assert int(state["steps"]) == rank

    cfg = load_config(None, ["model.small_cnn_width=4", "model.projector_dims=[32, 16]", "eval.knn_k=[5, 50]",
                             f"run.storage_path={storage}", f"data.train_path={storage}/train.beton",
                             f"data.test_path={storage}/test.beton"])
    torch.manual_seed(0)  # the same model and images on every rank
    model = build_model(cfg.model)
    images, labels = torch.randn(300, 3, 32, 32), torch.randint(0, 10, (300,))
    bank, test = (images[:200], labels[:200]), (images[200:], labels[200:])

    def batches(split, part, parts):
        start, end = part_range(len(split[0]), part, parts)
        return [(split[0][i : min(i + 32, end)], split[1][i : min(i + 32, end)]) for i in range(start, end, 32)]

    shared_spectra: dict = {}
    shared = evaluate(model, (batches(bank, rank, world_size), batches(test, rank, world_size)), cfg,
                      torch.device("cpu"), shared_spectra, shared=True)
    shared_baselines = baseline_knn((batches(bank, rank, world_size), batches(test, rank, world_size)), cfg,
                                    torch.device("cpu"), shared=True)
    cached = [cached_baseline_knn((batches(bank, rank, world_size), batches(test, rank, world_size)), cfg,
                                  torch.device("cpu"), shared=True) for _ in range(2)]
    if rank != 0:
        assert shared == {} and shared_baselines == {} and cached == [{}, {}]
        return
    alone_spectra: dict = {}
    alone = evaluate(model, (batches(bank, 0, 1), batches(test, 0, 1)), cfg, torch.device("cpu"), alone_spectra)
    for key in ("knn/top1_k5", "knn/top1_k50", "probe/top1", "spectrum/collapsed_r", "spectrum/collapsed_z"):
        assert shared[key] == alone[key], (key, shared[key], alone[key])
    for name in ("r", "z"):
        assert torch.allclose(torch.tensor(shared_spectra[name]), torch.tensor(alone_spectra[name]), rtol=1e-4)
    assert shared_baselines == baseline_knn((batches(bank, 0, 1), batches(test, 0, 1)), cfg, torch.device("cpu"))
    assert cached[0] == cached[1] == shared_baselines and len(list(Path(storage, "baseline_cache").glob("*.json"))) == 1
