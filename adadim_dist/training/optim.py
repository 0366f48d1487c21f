"""Optimizers (LARS, SGD, AdamW) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al. 2017), as used by SimCLR / VICReg.

    Biases and normalisation parameters (1-D tensors) get neither weight decay nor the trust ratio.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars"] and p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, 1.0)
                    grad = grad.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(optim_cfg, global_batch_size: int, main_params, probe_params) -> torch.optim.Optimizer:
    """One optimizer, two parameter groups: the SSL model and the online linear probe (no weight decay,
    no LARS adaptation, its own learning rate). DeepSpeed accepts only one optimizer, hence the groups."""
    lr = optim_cfg.lr * global_batch_size / 256
    groups = [
        {"params": main_params, "lr": lr, "weight_decay": optim_cfg.weight_decay, "name": "ssl"},
        {"params": probe_params, "lr": optim_cfg.probe_lr, "weight_decay": 0.0, "name": "probe"},
    ]
    if optim_cfg.name == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, weight_decay=optim_cfg.weight_decay)
    if optim_cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=optim_cfg.weight_decay)
    raise ValueError(f"optim.name: must be one of lars, sgd, adamw, got {optim_cfg.name!r}")


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """Multiplier of the base learning rate at a step: linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, min_ratio: float):
    # The probe keeps a constant rate: its objective is evaluation, not part of the schedule being tuned.
    schedule = warmup_cosine(total_steps, warmup_steps, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule, lambda step: 1.0])
