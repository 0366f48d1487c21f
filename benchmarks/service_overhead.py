"""The service against a plain PyTorch loop doing the same work, and where the service's job time goes.

    python benchmarks/service_overhead.py [--steps 120] [--repeats 2]

Both sides train ``configs/fmnist_smoke.yaml`` (the demo: strided small CNN of width 16 with a 2×2 pooled
representation, 512-512 projector, AdaDim as shipped, LARS, global batch 256, channels-last, statistics every
20 steps) on the shipped FFCV two-view loader, for ``--steps`` steps:

* **plain loop**: one process, ``torch.set_num_threads(2)``, 2 loader threads, no Ray, no DDP, no MLflow
  (``--plain-loop`` runs it in a fresh process and prints its windows);
* **service**: ``python -m adadim_dist.run`` as a user runs it, 2 DDP workers × 1 CPU, MLflow on.

Rate = images/s of each 20-step window (each image seen as two views), the first window (start-up, JIT)
dropped on both sides; median over windows; the runs alternate (``--repeats``), so drift in the machine's
speed hits both. The service's runs also report their start-up phases and evaluation tail (``time/*``,
``adadim_dist/training/timing.py``); evaluation is the demo's (bank 20,000, k = 20 and 200, baselines on).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from _common import emit, images_per_s_windows, run_service_job, time_metrics
except ImportError:  # run as a module
    from benchmarks._common import emit, images_per_s_windows, run_service_job, time_metrics

CONFIG = "configs/fmnist_smoke.yaml"
WINDOW = 20


def plain_loop(steps: int) -> list[float]:
    """The worker loop's work without the service: returns the images/s of every WINDOW-step window."""
    import torch

    from adadim_dist.config import load_config
    from adadim_dist.data import build_ssl_loader
    from adadim_dist.models import build_model
    from adadim_dist.objectives import adadim_from_config
    from adadim_dist.training.optim import build_optimizer, build_scheduler

    torch.set_num_threads(2)
    cfg = load_config(REPO / CONFIG, ["data.num_loader_workers=2"])
    batch = cfg.training.global_batch_size
    torch.manual_seed(cfg.training.seed)
    loader = build_ssl_loader(cfg.data, batch, 0, 1, cfg.training.seed, distributed=False)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    main_params, probe_params = model.parameter_groups()
    optimizer = build_optimizer(cfg.optim, batch, main_params, probe_params)
    scheduler = build_scheduler(optimizer, len(loader) * cfg.training.epochs,
                                int(cfg.optim.warmup_epochs * len(loader)), cfg.optim.min_lr_ratio)
    objective = adadim_from_config(cfg.objective, len(loader) * cfg.training.epochs)
    rates, window_start, step = [], time.perf_counter(), 0
    while step < steps:
        for view_a, view_b, labels in loader:
            view_a = view_a.contiguous(memory_format=torch.channels_last)
            view_b = view_b.contiguous(memory_format=torch.channels_last)
            r_a, z_a, logits_a = model(view_a)
            r_b, z_b, _ = model(view_b)
            loss, _ = objective(r_a, r_b, z_a, z_b, with_stats=(step + 1) % WINDOW == 0)
            probe_loss = torch.nn.functional.cross_entropy(logits_a, labels.reshape(-1).long())
            optimizer.zero_grad(set_to_none=True)
            (loss + probe_loss).backward()
            optimizer.step()
            scheduler.step()
            objective.step()
            step += 1
            if step % WINDOW == 0:
                now = time.perf_counter()
                rates.append(WINDOW * batch / (now - window_start))
                window_start = now
            if step >= steps:
                break
    return rates


def service(steps: int, storage: Path, name: str) -> tuple[list[float], dict]:
    summary, client, wall = run_service_job(
        ["--config", CONFIG, "training.epochs=1", f"training.max_steps_per_epoch={steps}",
         f"training.log_every={WINDOW}", f"run.storage_path={storage}", f"run.name={name}",
         "tracking.experiment=service-overhead"], name, REPO)
    timings = {k: round(v, 1) for k, v in time_metrics(client, summary["run_id"]).items()}
    return images_per_s_windows(client, summary["run_id"]), {"wall_s": round(wall, 1), **timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.plain_loop:
        print(json.dumps(plain_loop(args.steps)))
        return 0

    windows: dict[str, list[float]] = {"plain_loop": [], "service": []}
    service_runs = []
    with tempfile.TemporaryDirectory() as storage:
        for index in range(args.repeats):
            order = ["plain_loop", "service"] if index % 2 == 0 else ["service", "plain_loop"]
            for side in order:
                print(f"[bench] {side} #{index + 1}: {args.steps} steps", file=sys.stderr, flush=True)
                if side == "plain_loop":
                    out = subprocess.run([sys.executable, __file__, "--plain-loop", "--steps", str(args.steps)],
                                         cwd=REPO, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"plain loop failed:\n{out.stderr[-3000:]}")
                    windows[side] += json.loads(out.stdout.strip().splitlines()[-1])[1:]
                else:
                    rates, timings = service(args.steps, Path(storage), f"service-{index}")
                    windows[side] += rates
                    service_runs.append(timings)
    rates = {side: statistics.median(values) for side, values in windows.items()}
    emit({
        "benchmark": "service_overhead",
        "config": f"{CONFIG} (demo), global batch 256",
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "windows": {side: len(values) for side, values in windows.items()},
        "plain_loop_images_per_s": round(rates["plain_loop"], 1),
        "service_images_per_s": round(rates["service"], 1),
        "ratio": round(rates["service"] / rates["plain_loop"], 3),
        "service_runs": service_runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
