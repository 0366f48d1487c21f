"""Synchronized BatchNorm on every backend: torch's ``SyncBatchNorm`` on GPUs (NCCL), the same statistics
and backward on CPU (gloo), where torch's version refuses to run.

With global NT-Xent negatives, per-worker BatchNorm statistics let a worker's samples recognise each other
through their shared batch statistics (the leakage SimCLR's global BN removes), and the gradients stop being
those of one process on the whole batch. With sync on, every BatchNorm layer normalises with the mean and
variance of the global batch, and its running statistics are identical on every worker.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .collectives import is_distributed


class _GlobalBatchNormFunction(torch.autograd.Function):
    """BatchNorm over the global batch with torch's SyncBatchNorm backward, in fused elementwise ops.

    Forward: each worker's per-channel mean and biased variance (one fused pass), gathered with their counts
    and combined exactly (Chan et al.'s parallel variance: no cancellation in float32). Backward: the global
    sums of dy and dy·x are all-reduced; the input gradient is BatchNorm's, with global means; the weight and
    bias gradients are this worker's sums, which DDP averages like any other parameter's.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, eps):
        reduce_dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_var, local_mean = torch.var_mean(input, dim=reduce_dims, correction=0)
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        local = torch.cat([local_mean, local_var, count])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        stats = torch.stack(gathered)
        channels = input.shape[1]
        means, variances, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        variance = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        invstd = torch.rsqrt(variance + eps)
        scale = invstd if weight is None else weight * invstd
        shift = -mean * scale if bias is None else bias - mean * scale
        output = torch.addcmul(shift.view(shape), input, scale.view(shape))
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.total = total
        ctx.has_bias = bias is not None
        return output, mean, variance * total / (total - 1).clamp_min(1)

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_unbiased_var):
        input, weight, mean, invstd = ctx.saved_tensors
        reduce_dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_sum_dy = grad_output.sum(reduce_dims)
        local_sum_dy_x = (grad_output * input).sum(reduce_dims)
        local_sum_dy_xhat = invstd * (local_sum_dy_x - mean * local_sum_dy)
        sums = torch.cat([local_sum_dy, local_sum_dy_x])
        dist.all_reduce(sums)
        sum_dy, sum_dy_x = sums.chunk(2)
        mean_dy = sum_dy / ctx.total
        mean_dy_xhat = invstd * (sum_dy_x - mean * sum_dy) / ctx.total
        scale = invstd if weight is None else weight * invstd
        # dx = scale·(dy − mean(dy) − x̂·mean(dy·x̂)), with x̂ = (x − μ)·invstd, as a·x + c + scale·dy.
        slope = -scale * invstd * mean_dy_xhat
        offset = -scale * mean_dy - slope * mean
        grad_input = torch.addcmul(torch.addcmul(offset.view(shape), input, slope.view(shape)), grad_output,
                                   scale.view(shape))
        grad_weight = local_sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = local_sum_dy if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU tensors (gloo), where torch's ``SyncBatchNorm`` refuses to run
    (and DDP refuses a CPU module holding one). Same statistics, gradients and state dict."""

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
        output, mean, unbiased_var = _GlobalBatchNormFunction.apply(
            input, self.weight if self.affine else None, self.bias if self.affine else None, self.eps
        )
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)
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
