"""One training-engine interface over PyTorch DDP and DeepSpeed ZeRO.

The worker loop calls ``engine(x)``, ``engine.backward(loss)``, ``engine.step()`` and the checkpoint
methods, and never branches on the strategy. ``engine.module`` is the unwrapped model (for evaluation and
for saving the encoder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .collectives import is_distributed

MODEL_STATE = "model.pt"
TRAINER_STATE = "trainer.pt"


def to_memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    """Channels-last weights: oneDNN (CPU) and cuDNN (bf16 on tensor cores) run convolutions without the
    layout reorders NCHW costs them (1.27× per CPU training step of the small CNN, BENCHMARKS.md)."""
    return model.to(memory_format=torch.channels_last) if channels_last else model


def as_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def gradients_finite(module: nn.Module) -> bool:
    """True when every gradient this process holds is finite (no gradient yet counts as finite)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


class DDPEngine:
    """DistributedDataParallel (identity wrapper on one process) + optimizer + per-step LR schedule."""

    strategy = "ddp"

    def __init__(self, model: nn.Module, optimizer, scheduler, device: torch.device, use_amp: bool,
                 channels_last: bool = False) -> None:
        self.module = to_memory_format(model.to(device), channels_last)
        self.device = device
        self.channels_last = channels_last
        if is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.wrapped = self.module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.use_amp = use_amp and device.type == "cuda"

    def __call__(self, x: torch.Tensor):
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            return self.wrapped(as_input(x, self.channels_last))

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def gradients_finite(self) -> bool:
        return gradients_finite(self.module)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:
            torch.save(self.module.state_dict(), directory / MODEL_STATE)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                directory / TRAINER_STATE,
            )

    def load(self, directory: Path) -> None:
        self.module.load_state_dict(torch.load(directory / MODEL_STATE, map_location=self.device, weights_only=True))
        state = torch.load(directory / TRAINER_STATE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO (stage 0–3) around the same model, optimizer and schedule.

    The client optimizer keeps its two parameter groups (SSL model, online probe): DeepSpeed allows one.
    Weights and inputs stay NCHW (``training.channels_last`` applies to DDP only): DeepSpeed broadcasts each
    parameter as ``p.data.view(torch.uint8)``, which a channels-last 4-D weight cannot do, and ZeRO re-points
    parameters into flat contiguous buffers anyway.
    """

    strategy = "deepspeed"

    def __init__(self, model: nn.Module, optimizer, scheduler, device: torch.device, ds_cfg,
                 batch_size_per_worker: int, world_size: int, use_amp: bool) -> None:
        import deepspeed  # heavy import, only when this strategy is chosen

        config = {
            "train_batch_size": batch_size_per_worker * world_size,
            "train_micro_batch_size_per_gpu": batch_size_per_worker,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": ds_cfg.zero_stage},
            "bf16": {"enabled": bool(ds_cfg.bf16 or (use_amp and device.type == "cuda"))},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if ds_cfg.offload_optimizer:
            config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(device), optimizer=optimizer, lr_scheduler=scheduler, config=config,
            dist_init_required=False,
        )
        self.module = self.engine.module
        self.device = device
        self.bf16 = config["bf16"]["enabled"]

    def __call__(self, x: torch.Tensor):
        if self.bf16:
            x = x.to(torch.bfloat16)
        outputs = self.engine(x)
        return tuple(o.float() for o in outputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def gradients_finite(self) -> bool:
        # ZeRO partitions gradients; the engine's overflow check covers fp16 only, so check what this rank holds.
        return gradients_finite(self.module)

    def skip_step(self) -> None:
        self.engine.zero_grad()

    def step(self) -> None:
        self.engine.step()  # also steps the LR scheduler and zeroes gradients

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, directory: Path, rank: int) -> None:
        # Every rank writes its ZeRO shard; DeepSpeed names files by rank so they merge into one directory.
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="deepspeed", load_lr_scheduler_states=True)


def build_engine(strategy: str, model: nn.Module, optimizer, scheduler, device: torch.device, *, ds_cfg=None,
                 batch_size_per_worker: int = 1, world_size: int = 1, use_amp: bool = False,
                 channels_last: bool = False):
    if strategy == "ddp":
        return DDPEngine(model, optimizer, scheduler, device, use_amp, channels_last)
    if strategy == "deepspeed":
        return DeepSpeedEngine(model, optimizer, scheduler, device, ds_cfg, batch_size_per_worker, world_size, use_amp)
    raise ValueError(f"training.strategy: must be ddp or deepspeed, got {strategy!r}")

