"""Per-worker cost of the AdaDim objective against the number of workers W at a fixed per-worker batch, for
the sharded and the replicated form side by side, and a cost model checked against the measured points.

Measured: W gloo processes on this machine (W ∈ --world-sizes), one thread each, random local inputs R (n ×
d_r) and Z (n × D) per view; one step = the objective's forward + backward as in training (α re-estimated
every step, the worst case `alpha.interval=1`; MI with gradient; logging statistics off). The two forms
alternate step by step after the same warm-up (ABBA…), every step starting at a barrier.

- CPU time: `time.process_time()` of the step in each process (its own threads, gloo's included). With more
  processes than cores the processes time-share, so this, not wall time, is the per-worker work; wall time
  (barrier to end of backward, waits included) is reported too.
- Compute only: the same step in this one process, one thread, with the collectives replaced by stand-ins of
  the right shapes (the "gather" appends fixed rows of the other W − 1 workers, the "all-reduce" is the
  identity): the per-worker arithmetic without communication or time-sharing, for the same W.
- Peak memory: one extra step per form under `torch.profiler` with `profile_memory=True`; the peak of the
  running sum of its allocation/free events, i.e. the most bytes the step held above what was allocated
  before it (inputs excluded; allocator caching and libtorch's resident size not included).

Cost model: FLOPs of the matrix products and eigen/singular value decompositions, element-wise passes over
the D×D, N×N (or n×N) and N×D tensors (counted from the code, forward and backward), bytes received per worker
by the collectives, and the bytes of the largest tensors alive at the start of the backward, per worker, for
both forms; evaluated at the measured points (its time is the work of each kernel class ÷ that class's
single-thread rate, measured here at the start) and for W up to --model-max-world-size at the production
shape (--model-local-batch, --model-dim). The element-wise rate is the one fitted parameter: on this VM a
micro-benchmark of it varies tenfold (0.4–6.6 G elements/s: whether glibc maps fresh pages for a temporary or
reuses freed ones), so it is fitted to the compute-only times at the first W (both forms together) and every
other point is a prediction.

    python benchmarks/objective_scaling.py [--world-sizes 1 2 4 8] [--local-batch 128] [--dim 1024] \
        [--encoder-dim 1024] [--steps 5] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

FORMS = ("sharded", "replicated")
BYTES_F32, BYTES_F64 = 4, 8

try:
    from _common import emit, free_port
except ImportError:  # run as a module
    from benchmarks._common import emit, free_port
from adadim_dist.objectives.losses import covariance_from_row_gram


# ------------------------------------------------------------------------------------------------- cost model
def svd_flops(rows: int, cols: int) -> float:
    """Singular values only (Golub–Van Loan: bidiagonalisation 4mk² − 4k³/3, m ≥ k)."""
    m, k = max(rows, cols), min(rows, cols)
    return 4 * m * k**2 - 4 * k**3 / 3


def eigvalsh_flops(size: int) -> float:
    """Eigenvalues of a symmetric matrix: tridiagonalisation, 4/3·size³."""
    return 4 * size**3 / 3


def row_gram_is_cheaper(num_global: int, num_local: int, dim: int) -> bool:
    """The sharded α's choice between ZZᵀ (gathered rows) and the all-reduced ZᵀZ (as in information.py)."""
    return 2 * num_global**2 * dim + eigvalsh_flops(num_global) < 2 * num_local * dim**2 + eigvalsh_flops(dim)


def cost_model(form: str, n: int, world_size: int, dim: int, encoder_dim: int) -> dict[str, float]:
    """Per-worker cost of one forward + backward of the objective (VICReg + NT-Xent + order-2 MI, adaptive α
    re-estimated, no statistics). A matrix product of (a×b)(b×c) is 2abc FLOPs forward and twice that
    backward when both operands need gradients: 3× in all."""
    big_n, d, d_r, w = n * world_size, dim, encoder_dim, world_size
    cost = {"matmul_f32": 0.0, "matmul_f64": 0.0, "eigvalsh": 0.0, "svd": 0.0}
    # Element-wise passes, forward + backward, counted from the code (roughly: each out-of-place op and each
    # gradient op is one pass over its output): 13 over each view's D×D covariance in both forms; 13 over
    # NT-Xent's logits; 25 per view over the Gram matrices (sharded: the n × N blocks, without the trace
    # normalisation, 20); normalising, gathering and centring the N-row R and Z.
    rows_work = 18 * big_n * d + 30 * big_n * (d + d_r)
    # The sharded VICReg covariance: from the n × N blocks of the row Gram matrix while N ≤ D (one number per
    # view summed over workers), else from the D × D products (as in losses.py).
    row_covariance = covariance_from_row_gram(big_n, d)
    if form == "replicated":
        cost["elementwise"] = 26 * d**2 + 13 * (2 * big_n) ** 2 + 2 * 25 * big_n**2 + rows_work + 6 * big_n * d
    else:
        covariance_passes = 2 * 6 * n * big_n if row_covariance else 26 * d**2
        cost["elementwise"] = covariance_passes + 13 * (2 * n) * (2 * big_n) + 2 * 20 * n * big_n + rows_work
    if form == "replicated":
        cost["matmul_f32"] += 3 * 2 * (2 * big_n) ** 2 * d  # NT-Xent logits, 2N × 2N
        cost["matmul_f32"] += 2 * 3 * 2 * big_n * d**2  # VICReg covariance, two views
        cost["matmul_f32"] += 2 * 3 * 2 * big_n**2 * (d_r + d)  # Gram matrices of R and Z, two views
        cost["svd"] += svd_flops(big_n, d)  # α: singular values of the gathered Z_a (float32)
        # Alive at the start of the backward (saved for it), float32: the gathered R and Z; NT-Xent's unit
        # rows, logits and softmax (2N × 2N, three of them); per view the unit rows and the three N × N
        # Gram matrices (and their squares); VICReg's centred rows and covariance.
        memory = BYTES_F32 * (
            2 * big_n * (d + d_r) + 2 * big_n * d + 3 * (2 * big_n) ** 2
            + 2 * (big_n * (d + d_r) + 6 * big_n**2) + 2 * (big_n * d + d**2)
        )
        comm_extra = 0.0
    else:
        cost["matmul_f32"] += 3 * 2 * (2 * n) * (2 * big_n) * d  # NT-Xent: 2n local rows × 2N columns
        # VICReg: n × N row-Gram blocks, or the local D × D products; two views.
        cost["matmul_f32"] += 2 * 3 * 2 * n * (big_n if row_covariance else d) * d
        cost["matmul_f32"] += 2 * 3 * 2 * n * big_n * (d_r + d)  # n × N Gram blocks of R and Z, two views
        if row_gram_is_cheaper(big_n, n, d):
            cost["matmul_f64"] += 2 * big_n**2 * d
            cost["eigvalsh"] += eigvalsh_flops(big_n)
            alpha_reduce = 0.0
        else:
            cost["matmul_f64"] += 2 * n * d**2
            cost["eigvalsh"] += eigvalsh_flops(d)
            alpha_reduce = BYTES_F64 * d**2
        # The gathered R and Z (columns) and unit columns; NT-Xent's 2n × 2N logits and softmax; per view
        # the n × N blocks (three, and their squares); VICReg's centred rows and its n × N blocks or D × D
        # sums (two views, plus the all-reduced copies); α's float64 Gram matrix.
        covariance_memory = n * big_n if row_covariance else 2 * d**2
        memory = BYTES_F32 * (
            2 * big_n * (d + d_r) + 2 * big_n * d + 3 * (2 * n) * (2 * big_n)
            + 2 * (big_n * (d + d_r) + 6 * n * big_n) + 2 * (n * d + covariance_memory)
        ) + BYTES_F64 * min(big_n, d) ** 2
        # Forward and backward sum of the variances (2D) and the covariance's numbers (2 or 2D²), and α's Gram
        # matrix (ring all-reduce: 2(W − 1)/W of each; the small sums go pairwise, W − 1 copies received).
        sums = BYTES_F32 * (2 * d + (2 if row_covariance else 2 * d**2))
        comm_extra = 2 * (w - 1) * sums if row_covariance else 2 * (w - 1) / w * 2 * sums
        comm_extra += 2 * (w - 1) / w * alpha_reduce
    # Both forms gather R and Z of both views (received: (W − 1)·n rows each) and sum the N-row gradient of
    # each in the backward: each worker receives the other workers' gradients of its own rows ((W − 1)·n rows,
    # a reduce-scatter; gloo's pairwise exchange).
    gathered_width = 2 * (d + d_r)
    comm = BYTES_F32 * gathered_width * 2 * (w - 1) * n + comm_extra
    cost["flops"] = sum(cost[k] for k in ("matmul_f32", "matmul_f64", "eigvalsh", "svd"))  # not element-wise
    cost["comm_bytes"] = comm
    cost["memory_bytes"] = memory
    return cost


def kernel_rates(dim: int) -> dict[str, float]:
    """Single-thread FLOP/s of each matrix kernel class of the cost model, measured here at size ``dim``."""
    torch.set_num_threads(1)

    def rate(fn, flops: float, repeats: int = 7) -> float:
        fn()
        seconds = []
        for _ in range(repeats):
            start = time.process_time()
            fn()
            seconds.append(time.process_time() - start)
        return flops / statistics.median(seconds)

    a32, a64 = torch.randn(dim, dim), torch.randn(dim, dim, dtype=torch.float64)
    sym = a64 @ a64.T
    return {
        "matmul_f32": rate(lambda: a32 @ a32, 2 * dim**3),
        "matmul_f64": rate(lambda: a64 @ a64, 2 * dim**3),
        "eigvalsh": rate(lambda: torch.linalg.eigvalsh(sym), eigvalsh_flops(dim)),
        "svd": rate(lambda: torch.linalg.svdvals(a32), svd_flops(dim, dim)),
    }


def predicted_seconds(cost: dict[str, float], rates: dict[str, float]) -> float:
    return sum(cost[k] / rates[k] for k in rates)


def fitted_elementwise_rate(compute_seconds: dict[str, float], costs: dict[str, dict], rates: dict) -> float:
    """Elements/s that make the model's time equal the measured compute-only time summed over both forms."""
    matrix_seconds = sum(predicted_seconds(costs[form], rates) for form in FORMS)
    return sum(costs[form]["elementwise"] for form in FORMS) / (sum(compute_seconds.values()) - matrix_seconds)


# ------------------------------------------------------------------------------------------------ measurement
def _peak_bytes(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def _worker(rank: int, world_size: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    import torch.distributed as dist

    from adadim_dist.distributed import all_gather_with_grad, all_reduce_with_grad, broadcast_from_rank0
    from adadim_dist.objectives import AdaDim

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        g = torch.Generator().manual_seed(rank)
        n = args.local_batch
        inputs = [torch.randn(n, args.encoder_dim, generator=g) for _ in range(2)]
        inputs += [torch.randn(n, args.dim, generator=g) for _ in range(2)]
        objectives = {
            form: AdaDim(compute=form, alpha_mode="adaptive", alpha_interval=1, mi_sign="maximize",
                         gather=all_gather_with_grad, all_reduce=all_reduce_with_grad, sync=broadcast_from_rank0,
                         rank=rank)
            for form in FORMS
        }

        def step(form: str) -> None:
            leaves = [t.clone().requires_grad_(True) for t in inputs]
            loss, _ = objectives[form](*leaves, with_stats=False)
            loss.backward()

        def timed(form: str) -> tuple[float, float]:
            dist.barrier()
            wall, cpu = time.perf_counter(), time.process_time()
            step(form)
            return time.perf_counter() - wall, time.process_time() - cpu

        for _ in range(args.warmup):
            for form in FORMS:
                step(form)
        samples = {form: {"wall_s": [], "cpu_s": []} for form in FORMS}
        for i in range(args.steps):
            for form in FORMS if i % 2 == 0 else FORMS[::-1]:
                wall, cpu = timed(form)
                samples[form]["wall_s"].append(wall)
                samples[form]["cpu_s"].append(cpu)
        result = {}
        for form in FORMS:
            dist.barrier()
            result[form] = {k: statistics.median(v) for k, v in samples[form].items()}
            result[form]["peak_bytes"] = _peak_bytes(lambda: step(form))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def measure_compute_only(world_size: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per form: CPU seconds (median over steps) and peak bytes of one worker's arithmetic, in this process."""
    from adadim_dist.objectives import AdaDim

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, others = args.local_batch, args.local_batch * (world_size - 1)
    widths = [args.encoder_dim, args.encoder_dim, args.dim, args.dim]
    inputs = [torch.randn(n, width, generator=g) for width in widths]
    other_rows: dict[int, torch.Tensor] = {}  # by width: the objective gathers Z and R side by side

    def gather(local: torch.Tensor) -> torch.Tensor:
        width = local.shape[1]
        if width not in other_rows:
            other_rows[width] = torch.randn(others, width, generator=torch.Generator().manual_seed(width))
        return torch.cat([local, other_rows[width]])

    objectives = {form: AdaDim(compute=form, alpha_mode="adaptive", alpha_interval=1, mi_sign="maximize",
                               gather=gather, all_reduce=lambda x: x.clone(), rank=0) for form in FORMS}

    def step(form: str) -> None:
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        loss, _ = objectives[form](*leaves, with_stats=False)
        loss.backward()

    for _ in range(args.warmup):
        for form in FORMS:
            step(form)
    seconds: dict[str, list[float]] = {form: [] for form in FORMS}
    for i in range(args.steps):
        for form in FORMS if i % 2 == 0 else FORMS[::-1]:
            start = time.process_time()
            step(form)
            seconds[form].append(time.process_time() - start)
    return {form: {"compute_cpu_s": statistics.median(seconds[form]),
                   "compute_peak_mb": _peak_bytes(lambda: step(form)) / 2**20} for form in FORMS}


def measure(world_size: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Per form: per-worker CPU and wall seconds (median over steps, then over ranks) and peak bytes (max over
    ranks)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), args, out_dir), nprocs=world_size, join=True)
        ranks = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world_size)]
    return {
        form: {
            "cpu_s": statistics.median(r[form]["cpu_s"] for r in ranks),
            "wall_s": statistics.median(r[form]["wall_s"] for r in ranks),
            "peak_mb": max(r[form]["peak_bytes"] for r in ranks) / 2**20,
        }
        for form in FORMS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--local-batch", type=int, default=128, help="n, images per worker")
    parser.add_argument("--dim", type=int, default=1024, help="D, projector output width")
    parser.add_argument("--encoder-dim", type=int, default=1024, help="d_r, encoder output width")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per form")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per form")
    parser.add_argument("--model-local-batch", type=int, default=256)
    parser.add_argument("--model-dim", type=int, default=2048, help="D and d_r of the modelled shape")
    parser.add_argument("--model-max-world-size", type=int, default=1024)
    args = parser.parse_args()

    rates = kernel_rates(args.dim)
    measured: dict[int, dict] = {}
    for world_size in args.world_sizes:
        measured[world_size] = measure(world_size, args)
        compute_only = measure_compute_only(world_size, args)
        for form in FORMS:
            measured[world_size][form].update(compute_only[form])
        print(f"W={world_size}: " + json.dumps(measured[world_size]), flush=True)
    base = args.world_sizes[0]
    base_costs = {form: cost_model(form, args.local_batch, base, args.dim, args.encoder_dim) for form in FORMS}
    rates["elementwise"] = fitted_elementwise_rate(
        {form: measured[base][form]["compute_cpu_s"] for form in FORMS}, base_costs, rates)
    for world_size in args.world_sizes:
        for form in FORMS:
            cost = cost_model(form, args.local_batch, world_size, args.dim, args.encoder_dim)
            measured[world_size][form].update(
                model_s=predicted_seconds(cost, rates), model_gflop=cost["flops"] / 1e9,
                model_mb=cost["memory_bytes"] / 2**20, model_comm_mb=cost["comm_bytes"] / 2**20,
            )

    print(f"\nMeasured per worker, n={args.local_batch}, D={args.dim}, d_r={args.encoder_dim}")
    print("| W | form | CPU s | wall s | peak MiB | compute-only CPU s | compute-only peak MiB | model s "
          "| model GFLOP | model MiB | model comm MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for world_size in args.world_sizes:
        for form in FORMS:
            m = measured[world_size][form]
            print(f"| {world_size} | {form} | {m['cpu_s']:.3f} | {m['wall_s']:.3f} | {m['peak_mb']:.1f} "
                  f"| {m['compute_cpu_s']:.3f} | {m['compute_peak_mb']:.1f} | {m['model_s']:.3f} "
                  f"| {m['model_gflop']:.2f} | {m['model_mb']:.1f} | {m['model_comm_mb']:.1f} |")
    print(f"\nRatios to W={base}")
    print("| W | form | CPU | compute-only CPU | model time | peak | compute-only peak | model memory |")
    print("|---|---|---|---|---|---|---|---|")
    for world_size in args.world_sizes:
        for form in FORMS:
            m, b = measured[world_size][form], measured[base][form]
            print(f"| {world_size} | {form} | {m['cpu_s'] / b['cpu_s']:.2f} "
                  f"| {m['compute_cpu_s'] / b['compute_cpu_s']:.2f} | {m['model_s'] / b['model_s']:.2f} "
                  f"| {m['peak_mb'] / b['peak_mb']:.2f} | {m['compute_peak_mb'] / b['compute_peak_mb']:.2f} "
                  f"| {m['model_mb'] / b['model_mb']:.2f} |")

    model_rates = {**kernel_rates(args.model_dim), "elementwise": rates["elementwise"]}
    n, d = args.model_local_batch, args.model_dim
    print(f"\nCost model per worker, n={n}, D=d_r={d} (time at this machine's single-thread rates; "
          f"element-wise {rates['elementwise'] / 1e9:.2f} G elements/s as fitted)")
    print("| W | N | sharded GFLOP | replicated GFLOP | sharded s | replicated s | sharded MiB | replicated MiB "
          "| sharded comm MiB | replicated comm MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    modelled = {}
    world_size = 1
    while world_size <= args.model_max_world_size:
        costs = {form: cost_model(form, n, world_size, d, d) for form in FORMS}
        modelled[world_size] = {
            form: {"gflop": round(c["flops"] / 1e9, 2), "s": round(predicted_seconds(c, model_rates), 3),
                   "mib": round(c["memory_bytes"] / 2**20, 1), "comm_mib": round(c["comm_bytes"] / 2**20, 1)}
            for form, c in costs.items()
        }
        s, r = modelled[world_size]["sharded"], modelled[world_size]["replicated"]
        print(f"| {world_size} | {n * world_size} | {s['gflop']} | {r['gflop']} | {s['s']} | {r['s']} "
              f"| {s['mib']} | {r['mib']} | {s['comm_mib']} | {r['comm_mib']} |")
        world_size *= 2

    emit({
        "benchmark": "objective_scaling",
        "shape": {"local_batch": args.local_batch, "dim": args.dim, "encoder_dim": args.encoder_dim},
        "threads_per_worker": 1,
        "steps": args.steps,
        "kernel_rates_g_per_s": {k: round(v / 1e9, 2) for k, v in rates.items()},
        "measured": {w: {f: {k: round(v, 4) for k, v in m[f].items()} for f in FORMS} for w, m in measured.items()},
        "model_shape": {"local_batch": n, "dim": d, "encoder_dim": d},
        "model_kernel_rates_g_per_s": {k: round(v / 1e9, 2) for k, v in model_rates.items()},
        "model": modelled,
    })


if __name__ == "__main__":
    main()
