"""One training-engine interface over PyTorch DDP and DeepSpeed ZeRO.

The worker loop calls ``engine(x)``, ``engine.backward(loss)``, ``engine.step()`` and the checkpoint
methods, and never branches on the strategy. Both engines return float32 outputs whatever the compute
precision, so the objective (losses, α, estimators) never runs in bf16. ``engine.full_state_dict()`` is the
consolidated model state on every rank (a collective under ZeRO-3, whose ranks each hold a shard of every
parameter): evaluation and export work on a plain copy built from it, never on the sharded module.
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


def float_outputs(outputs) -> tuple[torch.Tensor, ...]:
    """Model outputs as float32: under bf16 autocast the last layers return bf16, and the objective's SVDs,
    Gram matrices and logits must not run in it."""
    return tuple(o.float() for o in outputs)


class StepBuffers:
    """The module's buffers (BatchNorm running statistics) as they were before a step's first forward pass, so
    a skipped step leaves them as it found them: the forward of a diverged batch has already moved them.
    Disabled (``enabled=False``) where no step is ever skipped (``training.non_finite=stop``): a copy per step
    for nothing."""

    def __init__(self, module: nn.Module, enabled: bool = True) -> None:
        self.module = module
        self.enabled = enabled
        self.saved: list[torch.Tensor] | None = None

    def remember(self) -> None:
        if self.enabled and self.saved is None:
            self.saved = [b.detach().clone() for b in self.module.buffers()]

    def forget(self) -> None:
        self.saved = None

    @torch.no_grad()
    def restore(self) -> None:
        if not self.enabled:
            raise RuntimeError("StepBuffers: a step is skipped, but its buffers were not kept (enabled=False)")
        for buffer, saved in zip(self.module.buffers(), self.saved or []):
            buffer.copy_(saved)
        self.saved = None


def gradients_finite(module: nn.Module) -> bool:
    """True when every gradient this process holds is finite (no gradient yet counts as finite).

    Every step asks, so the common case takes one fused pass: the gradients' 2-norms are finite exactly when
    every entry is, unless a sum of squares overflows (entries near 1e19 in float32). Only then is each entry
    checked, so that case still counts as finite. 8× faster than an elementwise check on the demo's model
    (benchmarks/finiteness_check.py)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class DDPEngine:
    """DistributedDataParallel (identity wrapper on one process) + optimizer + per-step LR schedule."""

    strategy = "ddp"

    def __init__(self, model: nn.Module, optimizer, scheduler, device: torch.device, use_amp: bool,
                 channels_last: bool = False, skips_steps: bool = True) -> None:
        self.module = to_memory_format(model.to(device), channels_last)
        self.device = device
        self.channels_last = channels_last
        if is_distributed():
            ids = [device.index] if device.type == "cuda" else None
            # No broadcast of rank 0's buffers before every forward (two collectives a step, each a wait for the
            # slower worker): training-mode BatchNorm normalises with batch statistics, and the running ones are
            # read only from rank 0's state (checkpoints, evaluation, export), the broadcast's own source, so
            # they are the same bits either way. DDP still syncs them once when it wraps the model.
            self.wrapped = nn.parallel.DistributedDataParallel(self.module, device_ids=ids,
                                                               forward_sync_buffers=False)
        else:
            self.wrapped = self.module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.use_amp = use_amp  # the worker enables it on GPUs only; tests use it on CPU
        self.step_buffers = StepBuffers(self.module, enabled=skips_steps)

    def __call__(self, x: torch.Tensor):
        self.step_buffers.remember()
        x = as_input(x, self.channels_last)
        if not self.use_amp:  # even a disabled autocast context costs ~0.1 ms a forward pass on a CPU
            return float_outputs(self.wrapped(x))
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            return float_outputs(self.wrapped(x))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state, copied to CPU (evaluation and export build a plain model from it)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def gradients_finite(self) -> bool:
        return gradients_finite(self.module)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.step_buffers.restore()

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.step_buffers.forget()

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

    Mixed precision is DeepSpeed's ``torch_autocast`` mode (fp32 master weights, bf16 compute), not its
    ``bf16`` mode: the latter casts BatchNorm's weights to bf16 but leaves its running statistics in fp32,
    and ``batch_norm`` refuses the mix (every backbone here has BatchNorm).
    """

    strategy = "deepspeed"

    def __init__(self, model: nn.Module, optimizer, scheduler, device: torch.device, ds_cfg,
                 batch_size_per_worker: int, world_size: int, use_amp: bool, skips_steps: bool = True) -> None:
        import deepspeed  # heavy import, only when this strategy is chosen

        config = {
            "train_batch_size": batch_size_per_worker * world_size,
            "train_micro_batch_size_per_gpu": batch_size_per_worker,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": ds_cfg.zero_stage},
            # No module reduces its gradients in bf16 (DeepSpeed's default does so for Linear and Conv): all-reduce
            # in fp32 as DDP does, so one config means the same optimizer under both strategies.
            "torch_autocast": {"enabled": bool(use_amp), "dtype": "bfloat16", "lower_precision_safe_modules": []},
            # DeepSpeed 0.19 clips the global gradient norm to 1.0 unless told otherwise; DDP does not clip, and
            # the same config must mean the same optimizer under both strategies.
            "gradient_clipping": 0.0,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if ds_cfg.offload_optimizer:
            config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            # The service's own optimizer (LARS, SGD or AdamW with the probe's group) steps the CPU partitions;
            # DeepSpeed otherwise refuses any client optimizer but its DeepSpeedCPUAdam under offload.
            config["zero_force_ds_cpu_optimizer"] = False
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(device), optimizer=optimizer, lr_scheduler=scheduler, config=config,
            dist_init_required=False,
        )
        self.module = self.engine.module
        self.device = device
        self.zero_stage = ds_cfg.zero_stage
        self.offload = bool(ds_cfg.offload_optimizer)
        self.step_buffers = StepBuffers(self.module, enabled=skips_steps)

    def __call__(self, x: torch.Tensor):
        self.step_buffers.remember()
        return float_outputs(self.engine(x))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every rank must call it: under ZeRO-3 the parameters are gathered from all ranks."""
        import deepspeed

        params = list(self.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.zero_stage == 3):
            return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def gradients_finite(self) -> bool:
        """Under ZeRO 1–3 the reduced gradients live in the optimizer's partitions and ``p.grad`` is already
        cleared, so ask the ZeRO optimizer (it checks its partitions and all-reduces the verdict; every rank
        must call this). Stage 0 keeps ordinary ``p.grad``."""
        if self.zero_stage > 0:
            return not self.engine.optimizer.has_overflow(partition_gradients=True)
        return gradients_finite(self.module)

    def skip_step(self) -> None:
        """Drop this step's gradients everywhere DeepSpeed keeps them, without touching weights or schedule."""
        if self.zero_stage == 3:
            # ZeRO-3 keeps reduced gradient partitions that zero_grad() leaves behind: clean up as its own
            # step does on an overflow (tests/distributed/test_engines.py fails without it).
            self.engine.optimizer._overflow_clean_up(None)
        else:
            self.engine.zero_grad()
            if self.offload:
                # ZeRO 1/2 with offload keep their own overflow flag, which only reset_cpu_buffers() clears (as
                # their step does on an overflow); left set, has_overflow() would report every later step bad.
                self.engine.optimizer.reset_cpu_buffers()
        self.step_buffers.restore()

    def step(self) -> None:
        self.engine.step()  # also steps the LR scheduler and zeroes gradients
        self.step_buffers.forget()

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def save(self, directory: Path, rank: int) -> None:
        # Every rank writes its ZeRO shard; DeepSpeed names files by rank so they merge into one directory.
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="deepspeed", load_lr_scheduler_states=True)


def build_engine(strategy: str, model: nn.Module, optimizer, scheduler, device: torch.device, *, ds_cfg=None,
                 batch_size_per_worker: int = 1, world_size: int = 1, use_amp: bool = False,
                 channels_last: bool = False, skips_steps: bool = True):
    """``skips_steps``: whether a step may be skipped (``skip_step``; ``training.non_finite=skip``)."""
    if strategy == "ddp":
        return DDPEngine(model, optimizer, scheduler, device, use_amp, channels_last, skips_steps)
    if strategy == "deepspeed":
        return DeepSpeedEngine(model, optimizer, scheduler, device, ds_cfg, batch_size_per_worker, world_size, use_amp,
                               skips_steps)
    raise ValueError(f"training.strategy: must be ddp or deepspeed, got {strategy!r}")

