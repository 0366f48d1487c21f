"""Synchronized BatchNorm on every backend: torch's ``SyncBatchNorm`` on GPUs (NCCL), the same statistics
through autograd-aware all-reduces on CPU (gloo), where torch's version refuses to run.

With global NT-Xent negatives, per-worker BatchNorm statistics let a worker's samples recognise each other
through their shared batch statistics (the leakage SimCLR's global BN removes), and the gradients stop being
those of one process on the whole batch. With sync on, every BatchNorm layer normalises with the mean and
variance of the global batch, and its running statistics are identical on every worker.
"""

from __future__ import annotations

import torch
from torch import nn

from .collectives import all_reduce_with_grad, is_distributed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU tensors (gloo), where torch's ``SyncBatchNorm`` refuses to run
    (and DDP refuses a CPU module holding one). Same statistics and the same state dict.

    Mean from the all-reduced per-channel sums, then the variance from the all-reduced sums of squared
    deviations from that mean (two passes: no cancellation in float32); both all-reduces have a backward, so
    the gradient is that of BatchNorm over the concatenated global batch.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not is_distributed():
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as torch's BatchNorm
                momentum = 1.0 / self.num_batches_tracked.item()

        reduce_dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = torch.tensor([input.numel() / input.shape[1]], dtype=input.dtype)
        sums = all_reduce_with_grad(torch.cat([input.sum(reduce_dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        variance = all_reduce_with_grad(centred.pow(2).sum(reduce_dims)) / count  # biased, as in normalisation
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)

        if self.track_running_stats:
            with torch.no_grad():
                unbiased = variance * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        return output


def convert_sync_batchnorm(module: nn.Module, device_type: str = "cpu") -> nn.Module:
    """Every BatchNorm*d → BatchNorm over the global batch: torch's ``SyncBatchNorm`` on GPUs (NCCL), its
    conversion included; ``GlobalBatchNorm`` on CPU. Parameters and buffers are moved, not copied, so the
    parameter groups of an optimizer stay valid and the state dict keeps its names."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device_type))
    return module
