"""Functions the data tests run on every rank (importable, so ``spawn`` can pickle them); the harness that
spawns them is tests/distributed/_harness.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..distributed._harness import free_port, run_ranks  # noqa: F401 (re-exported for the data tests)


def collect_shard_indices(rank: int, world_size: int, beton: str, out_dir: str) -> None:
    """Each rank: check a wrong rank is refused, then record the sample indices (labels) of epochs 0 and 1."""
    from adadim_dist.config import DataConfig
    from adadim_dist.data.loader import build_ssl_loader

    cfg = DataConfig(train_path=beton, num_loader_workers=1)
    try:
        build_ssl_loader(cfg, 64, rank=(rank + 1) % world_size, world_size=world_size, seed=5, distributed=True)
    except ValueError as err:
        assert "disagree with the process group" in str(err)
    else:
        raise AssertionError("a rank that disagrees with the process group was accepted")

    loader = build_ssl_loader(cfg, 64, rank=rank, world_size=world_size, seed=5, distributed=True)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen = [label.clone() for _, _, label in loader]
        np.save(Path(out_dir, f"rank{rank}_epoch{epoch}.npy"), np.concatenate([s.numpy() for s in seen]))
