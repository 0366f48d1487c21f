"""The small CNN's downsampling (max-pooling vs strided convolutions) and width: step time and random-init kNN.

For each variant: one training step of the smoke model (batch 128 per view, two 32×32 views, AdaDim, SGD) on
one torch thread, as each of the demo's two workers runs it, and the kNN top-1 (k=20, the demo's bank and
queries) of a randomly initialised encoder, the baseline the demo compares against. Steps of all variants
alternate after the same warm-up; medians.

    python benchmarks/small_cnn_variants.py [--steps 6] [--variants maxpool:16 stride:16 stride:24 stride:32]
"""

from __future__ import annotations

import argparse

import torch

from adadim_dist.config import load_config
from adadim_dist.distributed.engine import to_memory_format
from adadim_dist.models import build_model
from adadim_dist.training.evaluation import extract, knn_top1

try:
    from _common import alternating_medians, emit
    from memory_format import make_step
except ImportError:  # run as a module
    from benchmarks._common import alternating_medians, emit
    from benchmarks.memory_format import make_step

CONFIG = "configs/fmnist_smoke.yaml"


def overrides(variant: str) -> tuple[str, ...]:
    downsample, width = variant.split(":")
    return f"model.small_cnn_downsample={downsample}", f"model.small_cnn_width={width}"


def random_encoder_knn(cfg, loaders) -> float:
    torch.manual_seed(cfg.training.seed + 1)  # the seed the demo's baseline uses
    model = to_memory_format(build_model(cfg.model).eval(), cfg.training.channels_last)
    bank, bank_labels, _ = extract(model, loaders[0], None, cfg.eval.bank_size)
    test, test_labels, _ = extract(model, loaders[1], None)
    return knn_top1(bank, bank_labels, test, test_labels, cfg.eval.knn_k[0], cfg.eval.knn_temperature,
                    cfg.model.num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=["maxpool:16", "stride:16", "stride:24", "stride:32"],
                        help="downsample:width pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from adadim_dist.data import build_eval_loader

    configs = {variant: load_config(CONFIG, overrides(variant)) for variant in args.variants}
    steps = {variant: make_step(True, args.batch, overrides(variant)) for variant in args.variants}
    median = alternating_medians(steps, args.steps, args.warmup)

    data = next(iter(configs.values())).data
    loaders = [build_eval_loader(data, path, 512, rank=0, world_size=1, distributed=False)
               for path in (data.train_path, data.test_path)]
    results = {}
    for variant, cfg in configs.items():
        step_s = median[variant]
        results[variant] = {"step_s": round(step_s, 4), "images_per_s_per_worker": round(args.batch / step_s, 1),
                            "random_encoder_knn_top1": random_encoder_knn(cfg, loaders)}
    for loader in loaders:
        loader.close()
    emit({"benchmark": "small_cnn_variants", "batch_per_view": args.batch, "threads": 1, "steps": args.steps,
          "results": results})


if __name__ == "__main__":
    main()
