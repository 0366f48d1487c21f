"""Cost of synchronized BatchNorm per training step: 2 DDP workers (gloo, 1 thread each), the demo's model and
objective, sync on against off, in the same processes, alternating step by step after the same warm-up.

Each worker holds both models (one with ``GlobalBatchNorm`` layers, one with per-worker BatchNorm), so machine
drift hits both alike; a step is two forward passes, the AdaDim objective and the online probe's loss, backward and the
optimizer step through the real ``DDPEngine``. Rank 0 reports the median seconds per step of each variant.

    python benchmarks/sync_batchnorm_cost.py [--steps 20] [--batch 128] [--config configs/fmnist_smoke.yaml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import emit, free_port  # noqa: E402


def worker(rank: int, world_size: int, port: int, args, out: str) -> None:
    import torch.distributed as dist

    from adadim_dist.config import load_config
    from adadim_dist.distributed.engine import build_engine
    from adadim_dist.distributed.sync_batchnorm import convert_sync_batchnorm
    from adadim_dist.models import build_model
    from adadim_dist.training.optim import build_optimizer, build_scheduler
    from adadim_dist.training.build import build_objective

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    cfg = load_config(args.config)
    steps = {}
    for sync in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        if sync:
            model = convert_sync_batchnorm(model, "cpu")
        main, probe = model.parameter_groups()
        optimizer = build_optimizer(cfg.optim, args.batch * world_size, main, probe)
        scheduler = build_scheduler(optimizer, 10**6, 0, 0.0)
        engine = build_engine("ddp", model, optimizer, scheduler, torch.device("cpu"),
                              channels_last=cfg.training.channels_last)
        objective = build_objective(cfg, 10**6, rank)
        views = torch.randn(2, args.batch, 3, 32, 32)
        labels = torch.arange(args.batch) % cfg.model.num_classes

        def step(engine=engine, objective=objective, views=views):
            r_a, z_a, logits_a = engine(views[0])
            r_b, z_b, _ = engine(views[1])
            loss, _ = objective(r_a, r_b, z_a, z_b, with_stats=False)
            engine.backward(loss + torch.nn.functional.cross_entropy(logits_a, labels))  # as the worker does
            engine.step()
            objective.step()

        steps["sync" if sync else "local"] = step
    seconds = {name: [] for name in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.steps):
        for name, step in steps.items():
            dist.barrier()
            start = time.perf_counter()
            step()
            dist.barrier()
            seconds[name].append(time.perf_counter() - start)
    if rank == 0:
        torch.save({name: statistics.median(v) for name, v in seconds.items()}, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fmnist_smoke.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="images per worker and view")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as directory:
        out = str(Path(directory) / "result.pt")
        mp.spawn(worker, args=(2, free_port(), args, out), nprocs=2, join=True)
        medians = torch.load(out, weights_only=True)
    emit({
        "benchmark": "sync_batchnorm_cost",
        "config": args.config,
        "workers": 2,
        "batch_per_worker": args.batch,
        "steps": args.steps,
        "local_bn_step_s": round(medians["local"], 4),
        "sync_bn_step_s": round(medians["sync"], 4),
        "sync_over_local": round(medians["sync"] / medians["local"], 3),
    })


if __name__ == "__main__":
    os.chdir(REPO)
    main()
