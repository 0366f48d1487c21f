"""Time of one CPU training step with the full AdaDim objective versus VICReg alone.

ResNet-18 (CIFAR stem), 32×32 input, batch 128, two views, projector 2048-2048-2048, SGD step. The two
variants alternate step by step in one process (ABAB…) after the same warm-up, so drift in machine load
hits both equally. AdaDim runs as in training: α recomputed every step (the worst case, alpha.interval=1),
the MI term with gradient, and the logging statistics (extra SVDs) only on logging steps — their cost is
reported separately as `adadim_log_step_s`.

    python benchmarks/objective_overhead.py [--steps 6] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adadim_dist.models import SSLModel
from adadim_dist.objectives import AdaDim, vicreg_loss

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = SSLModel("resnet18", cifar_stem=True, projector_dims=(2048, 2048, 2048), num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    view_a = torch.randn(args.batch, 3, 32, 32)
    view_b = torch.randn(args.batch, 3, 32, 32)
    adadim = AdaDim(alpha_mode="adaptive", alpha_interval=1, mi_sign="maximize")

    def vicreg_step() -> None:
        _, z_a, _ = model(view_a)
        _, z_b, _ = model(view_b)
        loss = vicreg_loss(z_a, z_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def adadim_step(with_stats: bool = False) -> None:
        r_a, z_a, _ = model(view_a)
        r_b, z_b, _ = model(view_b)
        loss, _ = adadim(r_a, r_b, z_a, z_b, with_stats=with_stats)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        adadim.step()

    def timed(step) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        vicreg_step()
        adadim_step()
    vicreg_times, adadim_times = [], []
    for i in range(args.steps):
        # Alternate which variant goes first so neither always runs on a warmer cache.
        pair = (vicreg_step, adadim_step) if i % 2 == 0 else (adadim_step, vicreg_step)
        times = {fn: timed(fn) for fn in pair}
        vicreg_times.append(times[vicreg_step])
        adadim_times.append(times[adadim_step])
    log_step = timed(lambda: adadim_step(with_stats=True))

    vicreg_s, adadim_s = statistics.median(vicreg_times), statistics.median(adadim_times)
    emit(
        {
            "benchmark": "objective_overhead",
            "model": "resnet18-cifar, 32px, batch 128 x 2 views, projector 2048-2048-2048",
            "threads": args.threads,
            "steps": args.steps,
            "vicreg_step_s": round(vicreg_s, 4),
            "adadim_step_s": round(adadim_s, 4),
            "adadim_log_step_s": round(log_step, 4),
            "overhead_pct": round(100 * (adadim_s / vicreg_s - 1), 2),
            "target_pct": 5.0,
        }
    )


if __name__ == "__main__":
    main()
