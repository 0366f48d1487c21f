"""Images/s of the two-view FFCV loader against a PyTorch DataLoader applying the same augmentations per sample.

Data: the 60,000 Fashion-MNIST training images as 32×32 RGB (written once to --beton if absent). Both
loaders make two views per image with the default recipe of ``DataConfig`` (view a: crop, flip, colour
jitter p=0.8 with hue, grayscale p=0.2; view b: the same plus solarize p=0.2) plus, with --blur (default
on), Gaussian blur (p=1.0 in view a, p=0.1 in view b, the BYOL recipe), and return normalised float32 N×3×32×32
batches and labels. The baseline is what a typical torchvision-based SSL pipeline does (torchvision is not
installed here, so its PIL code path is re-implemented): a Dataset holding the uint8 array, per sample
``Image.fromarray`` → RandomResizedCrop (bilinear) → flip → ColorJitter (ImageEnhance + HSV hue shift, random
order) → grayscale → PIL GaussianBlur → solarize → tensor → normalise, in ``num_workers`` worker processes
(persistent, so their start-up is not timed). FFCV uses the same number of threads.

Timing: one full untimed epoch per loader first (FFCV's JIT compile, worker start-up, page cache), then
--epochs timed epochs per loader, alternating FFCV / baseline epoch by epoch so drift in machine load hits
both. Rate = images delivered / wall time. Prints one JSON line.

    python benchmarks/loader_throughput.py [--epochs 2] [--batch 256] [--workers 2] [--beton PATH]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from adadim_dist.config import DataConfig, ViewConfig
from adadim_dist.data.loader import build_ssl_loader
from adadim_dist.data.sources import read_source
from adadim_dist.data.writer import ensure_beton, to_rgb

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit


# ------------------------------------------------------------------------------------ PIL baseline views
class PILView:
    """One SSL view the way torchvision's transforms compute it on a PIL image, per sample."""

    def __init__(self, view: ViewConfig, size: int, mean, std):
        self.view, self.size = view, size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision ``RandomResizedCrop.get_params`` (left, top, right, bottom)."""
        area = width * height
        log_ratio = (math.log(self.view.crop_ratio[0]), math.log(self.view.crop_ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.view.crop_scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                return left, top, left + w, top + h
        return 0, 0, width, height

    @staticmethod
    def factor(magnitude: float) -> float:
        return random.uniform(max(0.0, 1.0 - magnitude), 1.0 + magnitude)

    def jitter(self, image: Image.Image) -> Image.Image:
        view = self.view
        steps = [0, 1, 2, 3]
        random.shuffle(steps)
        for step in steps:
            if step == 0 and view.brightness > 0:
                image = ImageEnhance.Brightness(image).enhance(self.factor(view.brightness))
            elif step == 1 and view.contrast > 0:
                image = ImageEnhance.Contrast(image).enhance(self.factor(view.contrast))
            elif step == 2 and view.saturation > 0:
                image = ImageEnhance.Color(image).enhance(self.factor(view.saturation))
            elif step == 3 and view.hue > 0:  # torchvision's F.adjust_hue for PIL images
                shift = random.uniform(-view.hue, view.hue)
                h, s, v = image.convert("HSV").split()
                h = Image.fromarray((np.asarray(h, dtype=np.uint8) + np.uint8(int(shift * 255) % 256)), "L")
                image = Image.merge("HSV", (h, s, v)).convert("RGB")
        return image

    def __call__(self, image: Image.Image) -> torch.Tensor:
        view = self.view
        image = image.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(*image.size))
        if random.random() < view.flip_prob:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if random.random() < view.jitter_prob:
            image = self.jitter(image)
        if random.random() < view.grayscale_prob:
            image = image.convert("L").convert("RGB")
        if random.random() < view.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(random.uniform(*view.blur_sigma)))
        if random.random() < view.solarize_prob:
            image = ImageOps.solarize(image, view.solarize_threshold)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
        return tensor.sub_(self.mean).div_(self.std)


class TwoViewDataset(torch.utils.data.Dataset):
    """In-memory uint8 images (as torchvision's CIFAR10 dataset keeps them), two PIL-augmented views each."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, data_cfg: DataConfig):
        self.images, self.labels = images, labels
        self.view_a = PILView(data_cfg.view_a, data_cfg.image_size, data_cfg.mean, data_cfg.std)
        self.view_b = PILView(data_cfg.view_b, data_cfg.image_size, data_cfg.mean, data_cfg.std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        return self.view_a(image), self.view_b(image), int(self.labels[index])


# ------------------------------------------------------------------------------------------------ timing
def timed_epoch(loader) -> tuple[int, float]:
    """(images delivered, seconds) for one full pass; touches each batch so nothing is left lazy."""
    started = time.perf_counter()
    count = 0
    for view_a, view_b, _ in loader:
        assert view_a.shape == view_b.shape
        count += view_a.shape[0]
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="FFCV threads = DataLoader worker processes")
    parser.add_argument("--beton", type=Path, default=Path("data/bench/fashion_mnist_train_rgb32.beton"))
    parser.add_argument("--no-blur", dest="blur", action="store_false", help="leave Gaussian blur out of both")
    parser.add_argument("--limit", type=int, help="use only the first N images (a quick check, not a result)")
    args = parser.parse_args()

    views = {"view_a": {"blur_prob": 1.0}, "view_b": {"blur_prob": 0.1, "solarize_prob": 0.2}} if args.blur else {}
    data_cfg = DataConfig(train_path=args.beton, num_loader_workers=args.workers, subset=args.limit, **views)
    info = ensure_beton("fashion_mnist", "train", args.beton, as_rgb32=True, progress=True)
    num_images = min(args.limit or info.num_samples, info.num_samples)

    source = read_source("fashion_mnist", "train").head(num_images)
    images = np.stack([to_rgb(image, pad_to=32) for image in source.images])
    dataset = TwoViewDataset(images, source.labels, data_cfg)
    baseline = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                           num_workers=args.workers, persistent_workers=True)  # fmt: skip
    ffcv = build_ssl_loader(data_cfg, args.batch, rank=0, world_size=1, seed=0, distributed=False)

    warmup = {"ffcv": timed_epoch(ffcv)[1], "baseline": timed_epoch(baseline)[1]}
    totals = {"ffcv": [0, 0.0], "baseline": [0, 0.0]}
    for _ in range(args.epochs):
        for name, loader in (("ffcv", ffcv), ("baseline", baseline)):
            count, seconds = timed_epoch(loader)
            totals[name][0] += count
            totals[name][1] += seconds
    rates = {name: count / seconds for name, (count, seconds) in totals.items()}
    emit({
        "benchmark": "loader_throughput",
        "dataset": f"fashion_mnist train, {num_images} images, 32x32 RGB",
        "views": "two views per image, SimCLR/BYOL set" + (" with blur" if args.blur else " without blur"),
        "batch_size": args.batch,
        "workers": args.workers,
        "timed_epochs": args.epochs,
        "ffcv_images_per_s": round(rates["ffcv"], 1),
        "baseline_images_per_s": round(rates["baseline"], 1),
        "ratio": round(rates["ffcv"] / rates["baseline"], 2),
        "ffcv_first_epoch_s": round(warmup["ffcv"], 1),
        "baseline_first_epoch_s": round(warmup["baseline"], 1),
    })  # fmt: skip


if __name__ == "__main__":
    main()
