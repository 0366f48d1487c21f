"""GPU training-step throughput: ResNet-18 (CIFAR stem), 32 px, batch 512, two views, bf16 autocast,
channels_last, data already on the device — the full AdaDim objective versus VICReg alone.

Needs only torch and the project's pure modules (objectives, models), so it runs on a bare GPU machine:

    PYTHONPATH=. python benchmarks/gpu_step.py [--batch 512] [--steps 50] [--warmup 15] [--device cuda]

The two variants alternate in blocks of ``--block`` steps after the same warm-up (cuDNN autotuning and
allocator growth excluded from both); each block is timed with CUDA events. Prints one JSON line.
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
except ImportError:
    from benchmarks._common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--alpha-interval", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    use_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    model = SSLModel("resnet18", cifar_stem=True, projector_dims=(2048, 2048, 2048), num_classes=10)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    view_a = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    view_b = torch.randn(args.batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    adadim = AdaDim(alpha_mode="adaptive", alpha_interval=args.alpha_interval, mi_sign="maximize")

    def forward_both():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_cuda):
            r_a, z_a, _ = model(view_a)
            r_b, z_b, _ = model(view_b)
        # Losses and estimators in float32: entropies of bf16 Gram matrices are too coarse.
        return r_a.float(), r_b.float(), z_a.float(), z_b.float()

    def vicreg_step():
        _, _, z_a, z_b = forward_both()
        loss = vicreg_loss(z_a, z_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def adadim_step():
        r_a, r_b, z_a, z_b = forward_both()
        loss, _ = adadim(r_a, r_b, z_a, z_b, with_stats=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        adadim.step()

    def timed_block(step, n):
        if use_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                step()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / n
        begin = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - begin) / n

    for _ in range(args.warmup):
        vicreg_step()
        adadim_step()
    per_step = {"vicreg": [], "adadim": []}
    for i in range(max(args.steps // args.block, 1)):
        order = [("vicreg", vicreg_step), ("adadim", adadim_step)]
        for name, step in order if i % 2 == 0 else order[::-1]:
            per_step[name].append(timed_block(step, args.block))

    vicreg_s, adadim_s = statistics.median(per_step["vicreg"]), statistics.median(per_step["adadim"])
    emit({
        "benchmark": "gpu_step",
        "device": torch.cuda.get_device_name(device) if use_cuda else str(device),
        "torch": torch.__version__,
        "batch": args.batch,
        "alpha_interval": args.alpha_interval,
        "vicreg_images_per_s": round(args.batch / vicreg_s, 1),
        "adadim_images_per_s": round(args.batch / adadim_s, 1),
        "adadim_over_vicreg_time": round(adadim_s / vicreg_s, 4),
        "adadim_epoch_60k_s": round(60000 / (args.batch / adadim_s), 2),
        "vicreg_epoch_60k_s": round(60000 / (args.batch / vicreg_s), 2),
    })


if __name__ == "__main__":
    main()
