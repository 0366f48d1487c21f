"""kNN of the two baselines every trained encoder is read against: a randomly initialised encoder of the same
architecture, and raw pixels; computed once per data, bank, k and architecture, and cached."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .._files import replace_atomically
from ..config import is_uri
from ..distributed import all_reduce_mean, broadcast_from
from ..distributed import rank as global_rank
from ..distributed.engine import to_memory_format
from ..models import build_model
from .features import extract
from .knn import gather_rows_with_labels, knn_top1_across_ranks


BASELINE_KEYS = ("baseline/knn_random_top1", "baseline/knn_pixels_top1")


def baseline_cache_key(cfg) -> str:
    """What the baselines depend on, and nothing else: the data files (path, size, modification time), how
    images are prepared, the bank, k and temperature, the random encoder's architecture and seed, and torch."""
    files = []
    for path in (cfg.data.train_path, cfg.data.test_path, *([cfg.eval.bank_path] if cfg.eval.bank_path else [])):
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    # The training views and where loaders run do not change the evaluation's images.
    data = cfg.data.model_dump(mode="json", exclude={"view_a", "view_b", "num_loader_workers", "cache_dir",
                                                     "train_path", "test_path"})
    described = {
        "files": files, "data": data,
        "bank_size": cfg.eval.bank_size, "k": cfg.eval.knn_k[0], "temperature": cfg.eval.knn_temperature,
        "model": cfg.model.model_dump(mode="json"), "seed": cfg.training.seed,
        "channels_last": cfg.training.channels_last, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def baseline_cache_dir(cfg) -> Path | None:
    return None if is_uri(cfg.run.storage_path) else Path(cfg.run.storage_path) / "baseline_cache"


def baseline_cache_path(cfg) -> Path | None:
    directory = baseline_cache_dir(cfg)
    return directory / f"{baseline_cache_key(cfg)}.json" if directory is not None else None


def read_cached_baselines(cfg) -> dict[str, float] | None:
    path = baseline_cache_path(cfg)
    if path is None or not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: computed again and rewritten
    return cached if set(cached) == set(BASELINE_KEYS) else None


def cached_baseline_knn(eval_loaders, cfg, device, shared: bool = False) -> dict[str, float]:
    """``baseline_knn``, computed once per data, bank, k and architecture: the baselines do not depend on
    training, so every later job (a re-run, each trial of a sweep) reads them back instead (seconds saved
    from the evaluation tail). Kept as JSON under ``<run.storage_path>/baseline_cache/``; rank 0's copy
    decides for every rank (``shared``: a collective). Returns the figures on rank 0, {} elsewhere."""
    is_rank0 = global_rank() == 0
    cached = read_cached_baselines(cfg) if is_rank0 else None
    if shared and broadcast_from(torch.tensor([float(cached is not None)], device=device), 0).item() == 1.0:
        return cached or {}
    if cached is not None:
        return cached
    results = baseline_knn(eval_loaders, cfg, device, shared)
    path = baseline_cache_path(cfg)
    if is_rank0 and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Concurrent trials: whole files only.
        replace_atomically(path, lambda temporary: Path(temporary).write_text(json.dumps(results)))
    return results


def baseline_knn(eval_loaders, cfg, device, shared: bool = False) -> dict[str, float]:
    """kNN (first k) of a randomly initialised encoder of the same architecture and of raw pixels, on rank 0
    ({} elsewhere); ``shared`` as in ``evaluate``."""
    k = cfg.eval.knn_k[0]
    torch.manual_seed(cfg.training.seed + 1)  # the same random encoder on every rank
    random_model = to_memory_format(build_model(cfg.model).to(device).eval(), cfg.training.channels_last)
    bank_loader, test_loader = eval_loaders
    results = {}
    for name, forward in (("random", random_model.encoder), ("pixels", lambda x: x.flatten(1))):
        bank, bank_labels, _ = extract(forward, bank_loader, device)
        test, test_labels, _ = extract(forward, test_loader, device)
        grey = float(name == "pixels" and is_grey(bank) and is_grey(test))
        if shared:  # every rank's parts must be grey
            grey = float(all_reduce_mean(torch.tensor([grey], device=device)).item() == 1.0)
        if grey:
            # Grey images stored as RGB (Fashion-MNIST): the cosine over one channel is the same, at a third
            # of the cost of this, the evaluation's largest product.
            bank, test = first_channel(bank), first_channel(test)
        if shared:
            (test,), test_labels = gather_rows_with_labels([test], test_labels, device)
        top1, _ = knn_top1_across_ranks(bank, bank_labels, test, test_labels, (k,), cfg.eval.knn_temperature,
                                        cfg.model.num_classes, device, shared)
        if global_rank() == 0:
            results[f"baseline/knn_{name}_top1"] = top1[k]
    return results


def is_grey(flat_rgb: torch.Tensor) -> bool:
    """Whether every flattened 3-channel image has three equal channels."""
    channels = flat_rgb.view(flat_rgb.shape[0], 3, -1)
    return torch.equal(channels[:, 0], channels[:, 1]) and torch.equal(channels[:, 0], channels[:, 2])


def first_channel(flat_rgb: torch.Tensor) -> torch.Tensor:
    return flat_rgb.view(flat_rgb.shape[0], 3, -1)[:, 0]
