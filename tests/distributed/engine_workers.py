"""Functions run on every rank by test_engines.py: the DDP and DeepSpeed engines on real gloo process groups."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from adadim_dist.distributed import all_gather_with_grad
from adadim_dist.distributed.engine import build_engine
from adadim_dist.distributed.sync_batchnorm import convert_sync_batchnorm
from adadim_dist.models import SSLModel
from adadim_dist.objectives import nt_xent_loss, vicreg_loss
from adadim_dist.training.optim import build_optimizer, build_scheduler

GLOBAL_BATCH = 8


def _deepspeed_env(rank: int, world_size: int) -> None:
    # DeepSpeed reads these (torchrun sets them; the test harness does not).
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size))


def small_model(seed: int = 0) -> SSLModel:
    torch.manual_seed(seed)
    return SSLModel("small_cnn", True, (32, 16), 10, small_cnn_width=4, small_cnn_downsample="stride")


def make_engine(strategy: str, stage: int, optim_name: str, rank: int, world_size: int, use_amp: bool = False,
                model: nn.Module | None = None, lr: float = 0.5, global_batch: int = GLOBAL_BATCH,
                offload: bool = False):
    _deepspeed_env(rank, world_size)
    model = model if model is not None else small_model()
    main, probe = model.parameter_groups()
    optim_cfg = SimpleNamespace(name=optim_name, lr=lr, momentum=0.9, weight_decay=0.1, probe_lr=0.1)
    optimizer = build_optimizer(optim_cfg, 256, main, probe)  # lr × 256/256
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, min_ratio=0.0)
    ds_cfg = SimpleNamespace(zero_stage=stage, offload_optimizer=offload, bf16=False)
    return build_engine(strategy, model, optimizer, scheduler, torch.device("cpu"), ds_cfg=ds_cfg,
                        batch_size_per_worker=global_batch // world_size, world_size=world_size, use_amp=use_amp)


def batch(step: int, rank: int, world_size: int, global_batch: int = GLOBAL_BATCH
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a fixed global batch of two views."""
    g = torch.Generator().manual_seed(100 + step)
    views = torch.randn(2, global_batch, 3, 32, 32, generator=g)
    share = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
    return views[0, share], views[1, share]


def objective(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """VICReg + NT-Xent on the gathered batch: depends on every sample, as AdaDim does."""
    z_a_global, z_b_global = all_gather_with_grad(z_a), all_gather_with_grad(z_b)
    return vicreg_loss(z_a, z_b, z_a_global=z_a_global, z_b_global=z_b_global) + nt_xent_loss(z_a_global, z_b_global)


def train_step(engine, step: int, rank: int, world_size: int, poison_rank: int | None = None) -> bool:
    """One step; with ``poison_rank`` that rank's gradients turn NaN while its loss stays finite (only a
    gradient check can see it). Returns whether the step was applied."""
    view_a, view_b = batch(step, rank, world_size)
    _, z_a, _ = engine(view_a)
    _, z_b, _ = engine(view_b)
    if rank == poison_rank:
        z_a.register_hook(lambda grad: grad * float("nan"))
    engine.backward(objective(z_a, z_b))
    finite = torch.tensor([float(engine.gradients_finite())])
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1.0:
        engine.skip_step()
        return False
    engine.step()
    return True


def lars_update_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One LARS step under each strategy it is allowed with: the parameters before, the averaged gradient the
    optimizer received (read from p.grad after the engine's backward, unflattened) and the parameters after."""
    results = {}
    for name, strategy, stage in (("ddp", "ddp", 0), ("zero0", "deepspeed", 0)):
        engine = make_engine(strategy, stage, "lars", rank, world_size)
        view_a, view_b = batch(0, rank, world_size)
        _, z_a, probe_logits = engine(view_a)
        _, z_b, _ = engine(view_b)
        labels = torch.arange(len(view_a)) % 10
        engine.backward(objective(z_a, z_b) + nn.functional.cross_entropy(probe_logits, labels))
        names = [n for n, _ in engine.module.named_parameters()]
        before = [p.detach().clone() for p in engine.module.parameters()]
        grads = [p.grad.detach().clone() for p in engine.module.parameters()]
        engine.step()
        after = [p.detach().clone() for p in engine.module.parameters()]
        results[name] = {"names": names, "before": before, "grads": grads, "after": after}
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))


NON_FINITE_CASES = (1, 2, 3, "1+offload", "2+offload")  # ZeRO stage, with the optimizer offloaded to the CPU


def non_finite_worker(rank: int, world_size: int, out_dir: str) -> None:
    """Under ZeRO 1, 2 and 3 (1 and 2 also with optimizer offload): a NaN gradient on rank 1 (its loss finite)
    is seen by every rank, and a run that skips that step and then takes two clean ones ends where a run that
    only took the clean ones ends (offload keeps its own overflow flag, which must not stay set)."""
    ends = {}
    for case in NON_FINITE_CASES:
        stage, offload = int(str(case)[0]), str(case).endswith("offload")
        skipped_then_clean = make_engine("deepspeed", stage, "sgd", rank, world_size, offload=offload)
        applied = [train_step(skipped_then_clean, 0, rank, world_size, poison_rank=1),
                   train_step(skipped_then_clean, 1, rank, world_size),
                   train_step(skipped_then_clean, 2, rank, world_size)]
        clean = make_engine("deepspeed", stage, "sgd", rank, world_size, offload=offload)
        train_step(clean, 1, rank, world_size)
        train_step(clean, 2, rank, world_size)
        ends[str(case)] = {"applied": applied, "skipped_then_clean": skipped_then_clean.full_state_dict(),
                       "clean": clean.full_state_dict(), "lr_after_skip": skipped_then_clean.lr(),
                       "lr_clean": clean.lr()}
    torch.save(ends, Path(out_dir, f"rank{rank}.pt"))


def mixed_precision_worker(rank: int, world_size: int, out_dir: str) -> None:
    """The same step's model outputs with and without bf16 autocast, under DDP and ZeRO-2: their dtypes, and
    the outputs themselves (the test feeds them to the objective)."""
    results = {}
    for name, strategy, stage in (("ddp", "ddp", 0), ("zero2", "deepspeed", 2)):
        for use_amp in (False, True):
            # A batch large enough for I(R;Z) to be a small difference of large entropies, as in training.
            engine = make_engine(strategy, stage, "sgd", rank, world_size, use_amp=use_amp, global_batch=256)
            view_a, view_b = batch(0, rank, world_size, global_batch=256)
            # What the convolutions computed in: proof that autocast ran, whatever dtype the outputs come back in.
            inner = []
            hooks = [m.register_forward_hook(lambda _m, _i, out: inner.append(out.dtype))
                     for m in engine.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            r_a, z_a, _ = engine(view_a)
            r_b, z_b, _ = engine(view_b)
            for hook in hooks:
                hook.remove()
            results[f"{name}_{'bf16' if use_amp else 'fp32'}"] = {
                "outputs": [t.detach() for t in (r_a, r_b, z_a, z_b)], "inner_dtypes": sorted({str(d) for d in inner}),
                # DeepSpeed marks the parameters whose gradients it all-reduces in the autocast dtype.
                "reduced_in_bf16": sorted(n for n, p in engine.module.named_parameters() if hasattr(p, "comm_dtype")),
            }
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))


class TinyBNNet(nn.Module):
    """A float64 conv net with BatchNorm in the encoder and the projector, the shape of the real models."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(4, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5))
        self.double()

    def forward(self, x):
        r = self.encoder(x)
        return r, self.projector(r)


def bn_batch(rank: int, world_size: int, global_batch: int = 16):
    g = torch.Generator().manual_seed(7)
    views = torch.randn(2, global_batch, 3, 8, 8, generator=g, dtype=torch.float64) * 2 + 0.5
    share = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
    return views[0, share], views[1, share]


def bn_loss_and_grads(model: nn.Module, wrapped: nn.Module, view_a, view_b):
    _, z_a = wrapped(view_a)
    _, z_b = wrapped(view_b)
    loss = objective(z_a, z_b)
    loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    buffers = torch.cat([b.reshape(-1).double() for n, b in model.named_buffers() if "running" in n])
    return loss.detach(), grads, buffers


def sync_batchnorm_worker(rank: int, world_size: int, out_dir: str) -> None:
    """Loss (averaged as logged), DDP-averaged gradients and running statistics of one step on this rank's
    share, with and without synchronized BatchNorm."""
    results = {}
    for sync in (True, False):
        model = TinyBNNet()
        if sync:
            model = convert_sync_batchnorm(model)
        wrapped = nn.parallel.DistributedDataParallel(model)
        loss, grads, buffers = bn_loss_and_grads(model, wrapped, *bn_batch(rank, world_size))
        dist.all_reduce(loss)
        results["sync" if sync else "local"] = {"loss": loss / world_size, "grads": grads, "buffers": buffers}
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))
