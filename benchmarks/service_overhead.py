"""The service against a plain PyTorch loop doing the same work, and where the service's job time goes.

    python benchmarks/service_overhead.py [--steps 120] [--repeats 2] [--config configs/fmnist_smoke.yaml]

Every side trains ``--config`` (by default ``configs/fmnist_smoke.yaml``: strided small CNN of width 16 with a
2×2 pooled representation, 512-512 projector, AdaDim as shipped, LARS, global batch 256, channels-last,
statistics every 20 steps, 2 loader threads; ``configs/fmnist_demo.yaml`` is the demo, the same with NT-Xent
alone) on the shipped FFCV two-view loader, for ``--steps`` steps:

* **plain loop**: one process, ``torch.set_num_threads(2)``, 2 loader threads, no Ray, no DDP, no MLflow
  (``--plain-loop`` runs it in a fresh process and prints its windows);
* **service loop**: the Ray Train worker's own code (``build_training``, ``train_epoch``, its monitors, MLflow
  to a temporary SQLite store) in one process like the plain loop, with no Ray: what the worker's code costs
  per step (``--service-loop`` runs it in a fresh process);
* **service**: ``python -m adadim_dist.run`` as a user runs it, in the config's layout (both shipped configs:
  ``training.layout=auto``, one worker holding every core of the node on CPUs; 2 DDP workers × 1 CPU with
  ``--service-overrides training.layout=as_given``), MLflow on.

So ``service loop / plain loop`` (``code_ratio``) is the cost of the worker's code, and ``service / service
loop`` (``ray_ratio``) that of running it under Ray (its processes beside the worker; with 2 × 1 the layout's
collectives too).

Rate = images/s of each 20-step window (each image seen as two views), the first window (start-up, JIT)
dropped on every side; median over windows; the runs alternate (``--repeats`` rounds), so drift in the
machine's speed hits every side, and each round's own ratio (``ratio_by_round``) shows the spread. Where a
step's time goes, on every side by the same ``StepClock`` (``time/step_*_ms``: waiting for the loader,
forward, objective, backward, the service's finiteness checks, update, monitors), median over windows; the CPU
model is recorded. Where the machine's CPU time goes while each side trains (``CpuByProcessGroup``): cores
used by the training processes, the job's driver, Ray's actors and daemons, and anything else, averaged over
the seconds in which the training processes used at least one core. The service's runs also report their
start-up phases and evaluation tail (``time/*``, ``adadim_dist/training/timing.py``); evaluation is the demo's
(bank 20,000, k = 20 and 200, baselines on). ``--service-overrides`` changes the service's side (e.g. its
layout).
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
    from _common import CpuByProcessGroup, emit, images_per_s_windows, run_service_job, time_metrics
except ImportError:  # run as a module
    from benchmarks._common import CpuByProcessGroup, emit, images_per_s_windows, run_service_job, time_metrics
from adadim_dist.training.timing import STEP_PHASES
from adadim_dist.training.tracking import cpu_model

DEFAULT_CONFIG = "configs/fmnist_smoke.yaml"
WINDOW = 20


def plain_loop(steps: int, config: str) -> dict[str, list]:
    """The worker loop's work without the service: the images/s (``rates``) and the step phases (``phases``,
    ``StepClock``) of every WINDOW-step window."""
    import torch

    from adadim_dist.config import load_config
    from adadim_dist.data import build_ssl_loader
    from adadim_dist.models import build_model
    from adadim_dist.objectives import adadim_from_config
    from adadim_dist.training.optim import build_optimizer, build_scheduler
    from adadim_dist.training.timing import StepClock

    torch.set_num_threads(2)
    cfg = load_config(REPO / config, ["data.num_loader_workers=2"])
    batch = cfg.training.global_batch_size
    torch.manual_seed(cfg.training.seed)
    loader = build_ssl_loader(cfg.data, batch, 0, 1, cfg.training.seed, distributed=False)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    main_params, probe_params = model.parameter_groups()
    optimizer = build_optimizer(cfg.optim, batch, main_params, probe_params)
    scheduler = build_scheduler(optimizer, len(loader) * cfg.training.epochs,
                                int(cfg.optim.warmup_epochs * len(loader)), cfg.optim.min_lr_ratio)
    objective = adadim_from_config(cfg.objective, len(loader) * cfg.training.epochs)
    rates, phases, window_start, step = [], [], time.perf_counter(), 0
    clock = StepClock()
    while step < steps:
        clock.restart()
        for view_a, view_b, labels in loader:
            clock.lap("loader_wait")
            view_a = view_a.contiguous(memory_format=torch.channels_last)
            view_b = view_b.contiguous(memory_format=torch.channels_last)
            r_a, z_a, logits_a = model(view_a)
            r_b, z_b, _ = model(view_b)
            clock.lap("forward")
            loss, _ = objective(r_a, r_b, z_a, z_b, with_stats=(step + 1) % WINDOW == 0)
            probe_loss = torch.nn.functional.cross_entropy(logits_a, labels.reshape(-1).long())
            clock.lap("objective")
            optimizer.zero_grad(set_to_none=True)
            (loss + probe_loss).backward()
            clock.lap("backward")
            optimizer.step()
            scheduler.step()
            objective.step()
            clock.lap("update")
            step += 1
            if step % WINDOW == 0:
                now = time.perf_counter()
                rates.append(WINDOW * batch / (now - window_start))
                phases.append(clock.window_ms())
                window_start = now
            clock.lap("monitors")
            if step >= steps:
                break
    return {"rates": rates, "phases": phases}


def service_loop(steps: int, config: str) -> dict[str, list]:
    """The Ray Train worker's training code without Ray: the images/s and step phases of every WINDOW-step
    window, as ``plain_loop`` returns them."""
    import torch

    from adadim_dist.config import load_config
    from adadim_dist.training.monitors import Monitor, default_monitors
    from adadim_dist.training.tracking import MLflowSink
    from adadim_dist.training.build import build_training
    from adadim_dist.training.worker import train_epoch

    torch.set_num_threads(2)
    cfg = load_config(REPO / config, ["training.num_workers=1", "training.cpus_per_worker=2",
                                      "data.num_loader_workers=2", f"training.max_steps_per_epoch={steps}",
                                      f"training.log_every={WINDOW}"])
    device = torch.device("cpu")
    torch.manual_seed(cfg.training.seed)
    loader, steps_per_epoch, engine, objective = build_training(cfg, 0, 1, device)
    windows: dict[str, list] = {"rates": [], "phases": []}

    class Windows(Monitor):
        def on_step(self, step, metrics):
            if step.is_log_step:
                windows["rates"].append(metrics["train/images_per_s"])
                windows["phases"].append({k: v for k, v in metrics.items() if k.startswith("time/step_")})

    with tempfile.TemporaryDirectory() as store:
        sink = MLflowSink(f"sqlite:///{store}/mlflow.db", "service-loop", "service-loop", Path(store))
        monitors = [*default_monitors(cfg, 0, device, sink, None, None), Windows()]
        train_epoch(engine, objective, loader, steps_per_epoch, 0, cfg, monitors, 0, 1, device, False)
        sink.flush()
        loader.close()
    return windows


def service(steps: int, config: str, storage: Path, name: str, overrides: list[str]) -> tuple[dict, dict]:
    summary, client, wall = run_service_job(
        ["--config", config, "training.epochs=1", f"training.max_steps_per_epoch={steps}",
         f"training.log_every={WINDOW}", f"run.storage_path={storage}", f"run.name={name}",
         "tracking.experiment=service-overhead", *overrides], name, REPO)
    timings = {k: round(v, 1) for k, v in time_metrics(client, summary["run_id"]).items()}
    run_id = summary["run_id"]
    phase_windows = {phase: images_per_s_windows(client, run_id, f"time/step_{phase}_ms") for phase in STEP_PHASES}
    phases = [{f"time/step_{phase}_ms": values[i] for phase, values in phase_windows.items()}
              for i in range(min(map(len, phase_windows.values())))]
    return ({"rates": images_per_s_windows(client, run_id), "phases": phases},
            {"wall_s": round(wall, 1), **timings})


def median_phases(windows: list[dict]) -> dict[str, float]:
    """Each phase's median over windows, in ms per step."""
    return {phase: round(statistics.median(w.get(f"time/step_{phase}_ms", 0.0) for w in windows), 2)
            for phase in STEP_PHASES} if windows else {}


def run_child(side: str, steps: int, config: str) -> dict[str, list]:
    """``side`` (the plain loop or the service loop) in a fresh process, its start-up window dropped."""
    out = subprocess.run([sys.executable, __file__, f"--{side.replace('_', '-')}", "--steps", str(steps),
                          "--config", config], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {key: values[1:] for key, values in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="what both sides train (relative to the repository)")
    parser.add_argument("--service-overrides", nargs="*", default=[],
                        help="config overrides for the service's side (e.g. training.num_workers=1 "
                             "training.cpus_per_worker=2)")
    parser.add_argument("--plain-loop", action="store_true", help=argparse.SUPPRESS)  # the child processes
    parser.add_argument("--service-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_loop or args.service_loop:
        print(json.dumps((plain_loop if args.plain_loop else service_loop)(args.steps, args.config)))
        return 0

    sides = ["plain_loop", "service_loop", "service"]
    windows: dict[str, list[float]] = {side: [] for side in sides}
    phases: dict[str, list[dict]] = {side: [] for side in sides}
    cores: dict[str, list[dict]] = {side: [] for side in sides}
    service_runs = []
    rounds: list[dict[str, float]] = []  # each round's median images/s per side: the ratio's spread, paired
    with tempfile.TemporaryDirectory() as storage:
        for index in range(args.repeats):
            rounds.append({})
            for side in sides if index % 2 == 0 else sides[::-1]:
                print(f"[bench] {side} #{index + 1}: {args.steps} steps", file=sys.stderr, flush=True)
                with CpuByProcessGroup() as cpu:
                    if side == "service":
                        result, timings = service(args.steps, args.config, Path(storage), f"service-{index}",
                                                  args.service_overrides)
                        service_runs.append(timings)
                    else:
                        result = run_child(side, args.steps, args.config)
                cores[side].append(cpu.busy_cores("train_workers" if side == "service" else side))
                windows[side] += result["rates"]
                phases[side] += result["phases"]
                rounds[-1][side] = round(statistics.median(result["rates"]), 1)
    rates = {side: statistics.median(values) for side, values in windows.items()}
    step_ms = {side: median_phases(values) for side, values in phases.items()}
    print(f"{'ms per step':<14}{'plain loop':>11}{'service loop':>13}{'service':>9}", file=sys.stderr)
    for phase in STEP_PHASES:
        print(f"{phase:<14}" + "".join(f"{step_ms[side].get(phase, 0):>{width}.1f}"
                                        for side, width in zip(sides, (11, 13, 9))), file=sys.stderr)
    emit({
        "benchmark": "service_overhead",
        "cpu": cpu_model(),
        "config": args.config,
        "service_overrides": args.service_overrides,
        "steps_per_run": args.steps,
        "repeats": args.repeats,
        "windows": {side: len(values) for side, values in windows.items()},
        **{f"{side}_images_per_s": round(rates[side], 1) for side in sides},
        "ratio": round(rates["service"] / rates["plain_loop"], 3),
        # The ratio's two factors: the worker's code, and running it under Ray.
        "code_ratio": round(rates["service_loop"] / rates["plain_loop"], 3),
        "ray_ratio": round(rates["service"] / rates["service_loop"], 3),
        "rounds": rounds,
        "ratio_by_round": [round(r["service"] / r["plain_loop"], 3) for r in rounds],
        "step_phases_ms": step_ms,
        "cores_while_training": cores,
        "service_runs": service_runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
