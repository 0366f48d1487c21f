"""Embedding the demo's evaluation images on a CPU: the loader's batch of 512 in one forward pass against
passes of ``CPU_FORWARD_BATCH`` (what ``extract`` does since 2026-12-03), side by side.

    python benchmarks/eval_forward.py [--images 5120] [--repeats 3]

The demo's encoder (``configs/fmnist_smoke.yaml``: small CNN, width 16, strided, channels-last weights) in eval
mode, one torch thread as each rank has, on random 3×32×32 images in loader batches of 512. "whole batch" calls
the encoder on each batch of 512; "chunked" calls ``forward_in_chunks`` with ``CPU_FORWARD_BATCH``. The two
alternate after one untimed pass each, and each reports its median seconds and images per second. Both give
the same features up to float rounding (checked here).

Why the whole batch is slower: its first activation (512 × 16 × 32 × 32 float32, 33.5 MB) is above glibc's
largest dynamic mmap threshold (32 MB), so every pass maps fresh pages for it and faults them in. With glibc
told to keep such blocks (``MALLOC_MMAP_THRESHOLD_=209715200 MALLOC_TRIM_THRESHOLD_=419430400``) the two take
the same time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adadim_dist.config import Config  # noqa: E402
from adadim_dist.models import build_model  # noqa: E402
from adadim_dist.evaluation import CPU_FORWARD_BATCH, forward_in_chunks  # noqa: E402

try:
    from _common import alternating_medians, emit
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit

LOADER_BATCH = 512


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = Config.model_validate(yaml.safe_load((REPO / "configs" / "fmnist_smoke.yaml").read_text()))
    encoder = build_model(cfg.model).encoder.eval().to(memory_format=torch.channels_last)
    batches = torch.randn(args.images, 3, 32, 32).split(LOADER_BATCH)

    @torch.no_grad()
    def embed(chunk: int | None) -> torch.Tensor:
        return torch.cat([forward_in_chunks(encoder, batch, chunk) for batch in batches])

    torch.testing.assert_close(embed(None), embed(CPU_FORWARD_BATCH))
    medians = alternating_medians({"whole_batch": lambda: embed(None), "chunked": lambda: embed(CPU_FORWARD_BATCH)},
                                  timed=args.repeats, warmup=1)
    emit({"benchmark": "eval_forward", "encoder": "configs/fmnist_smoke.yaml (small CNN, channels-last)",
          "images": args.images, "loader_batch": LOADER_BATCH, "forward_batch": CPU_FORWARD_BATCH,
          "whole_batch_s": round(medians["whole_batch"], 3), "chunked_s": round(medians["chunked"], 3),
          "whole_batch_images_per_s": round(args.images / medians["whole_batch"]),
          "chunked_images_per_s": round(args.images / medians["chunked"]),
          "ratio": round(medians["chunked"] / medians["whole_batch"], 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
