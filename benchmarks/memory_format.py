"""One CPU training step of the smoke model in NCHW against channels-last memory layout.

The model of ``configs/fmnist_smoke.yaml`` (small CNN width 16, projector 512-512, online probe), batch 128
per view (a worker's share of the demo's global 256), two 32×32 views, the AdaDim objective, SGD. Both
variants are built from the same seed and alternate step by step in one process after the same warm-up;
medians of the timed steps. One torch thread by default, as each of the demo's two workers has.

    python benchmarks/memory_format.py [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import torch

from adadim_dist.config import load_config
from adadim_dist.distributed.engine import as_input, to_memory_format
from adadim_dist.models import build_model
from adadim_dist.objectives import adadim_from_config

try:
    from _common import alternating_medians, emit
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit


def make_step(channels_last: bool, batch: int, overrides: tuple[str, ...] = ()):
    """One training step of the smoke model (with ``overrides``) on fixed random views."""
    cfg = load_config("configs/fmnist_smoke.yaml", list(overrides))
    torch.manual_seed(0)
    model = to_memory_format(build_model(cfg.model), channels_last)
    objective = adadim_from_config(cfg.objective, total_steps=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    view_a = as_input(torch.randn(batch, 3, 32, 32, generator=generator), channels_last)
    view_b = as_input(torch.randn(batch, 3, 32, 32, generator=generator), channels_last)

    def step() -> None:
        r_a, z_a, _ = model(view_a)
        r_b, z_b, _ = model(view_b)
        loss, _ = objective(r_a, r_b, z_a, z_b, with_stats=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        objective.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    steps = {"nchw": make_step(False, args.batch), "channels_last": make_step(True, args.batch)}
    median = alternating_medians(steps, args.steps, args.warmup)
    emit({
        "benchmark": "memory_format",
        "model": "the smoke config's model (small_cnn width 16, strided since 2026-12-01) + projector 512-512"
                 " + probe, AdaDim, SGD",
        "batch_per_view": args.batch,
        "threads": args.threads,
        "steps": args.steps,
        "nchw_step_s": round(median["nchw"], 4),
        "channels_last_step_s": round(median["channels_last"], 4),
        "nchw_images_per_s": round(args.batch / median["nchw"], 1),
        "channels_last_images_per_s": round(args.batch / median["channels_last"], 1),
        "speedup": round(median["nchw"] / median["channels_last"], 3),
    })


if __name__ == "__main__":
    main()
