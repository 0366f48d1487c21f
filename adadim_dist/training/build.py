"""What every training worker builds before its first step: its loader, the model, optimizer and schedule in
their engine, and the objective wired to the process group. The worker (``worker.py``) and
``benchmarks/service_overhead.py`` (the worker's code without Ray) both build through here."""

from __future__ import annotations

import time

import torch

from ..config import Config
from ..distributed import all_gather_with_grad, all_reduce_with_grad, broadcast_from_rank0, is_distributed
from ..distributed.engine import build_engine
from ..distributed.sync_batchnorm import convert_sync_batchnorm
from ..models import build_model
from ..objectives import adadim_from_config
from .optim import build_optimizer, build_scheduler


def build_training(cfg: Config, rank: int, world_size: int, device: torch.device, stamps: dict | None = None):
    """This rank's (training loader, steps per epoch, engine, objective), as every worker builds them (and
    ``benchmarks/service_overhead.py`` outside Ray). ``stamps`` gets the start-up times ``loaders_ready_at`` and
    ``engine_ready_at``."""
    from ..data import build_ssl_loader

    stamps = {} if stamps is None else stamps
    train_loader = build_ssl_loader(
        cfg.data, cfg.training.batch_size_per_worker, rank, world_size, cfg.training.seed,
        distributed=world_size > 1, device=device if device.type == "cuda" else None,
    )
    steps_per_epoch = len(train_loader)
    if cfg.training.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.training.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"training.global_batch_size: {cfg.training.global_batch_size} is larger than the training set "
            f"({cfg.data.train_path}) gives {world_size} workers"
        )
    total_steps = steps_per_epoch * cfg.training.epochs
    stamps["loaders_ready_at"] = time.time()

    model = build_model(cfg.model)
    if cfg.model.sync_batchnorm and world_size > 1:
        # Same parameter objects, so the optimizer groups built below are those of the converted model.
        model = convert_sync_batchnorm(model, device.type)
    main_params, probe_params = model.parameter_groups()
    optimizer = build_optimizer(cfg.optim, cfg.training.global_batch_size, main_params, probe_params)
    scheduler = build_scheduler(
        optimizer, total_steps, int(cfg.optim.warmup_epochs * steps_per_epoch), cfg.optim.min_lr_ratio
    )
    engine = build_engine(
        cfg.training.strategy, model, optimizer, scheduler, device, ds_cfg=cfg.training.deepspeed,
        batch_size_per_worker=cfg.training.batch_size_per_worker, world_size=world_size,
        use_amp=cfg.training.mixed_precision and device.type == "cuda", channels_last=cfg.training.channels_last,
        skips_steps=cfg.training.non_finite == "skip",
    )
    objective = build_objective(cfg, total_steps, rank)
    stamps["engine_ready_at"] = time.time()
    return train_loader, steps_per_epoch, engine, objective


def build_objective(cfg: Config, total_steps: int, rank: int):
    """AdaDim wired to this process group's autograd-aware collectives. With no group (one DDP worker) it gets
    none: the objective then skips the packing that lets several tensors travel in one gather (~1 ms of a
    step's forward and backward on the 2-core machine, BENCHMARKS.md)."""
    if not is_distributed():
        return adadim_from_config(cfg.objective, total_steps, rank=rank)
    return adadim_from_config(cfg.objective, total_steps, gather=all_gather_with_grad,
                              all_reduce=all_reduce_with_grad, sync=broadcast_from_rank0, rank=rank)
