"""Frozen features of an evaluation loader: forward passes in CPU-friendly chunks, copies out of FFCV's
reused buffers."""

from __future__ import annotations

import torch

#: Images per forward pass when evaluating on a CPU. A loader's batch of 512 gives the small CNN a 33 MB first
#: activation, above glibc's largest dynamic mmap threshold (32 MB): every pass then maps fresh pages and
#: faults them in, and embedding takes twice as long as in passes of 128 (benchmarks/eval_forward.py). GPUs
#: take the whole batch.
CPU_FORWARD_BATCH = 128


def forward_batch_for(device) -> int | None:
    """The most images ``extract`` passes through the model at once on ``device`` (None: the loader's batch)."""
    return CPU_FORWARD_BATCH if torch.device(device).type == "cpu" else None


def forward_in_chunks(forward, images: torch.Tensor, chunk: int | None):
    """``forward(images)`` in passes of at most ``chunk`` images, outputs (a tensor or a tuple) concatenated."""
    if chunk is None or images.shape[0] <= chunk:
        return forward(images)
    outputs = [forward(part) for part in images.split(chunk)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


@torch.no_grad()
def extract(forward, loader, device, max_images: int | None = None):
    """(features, labels, probe logits or None) over an evaluation loader yielding (images, labels)."""
    features, labels, logits = [], [], []
    seen = 0
    chunk = forward_batch_for(device)

    def keep(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # FFCV hands out views into buffers it reuses a few batches later; anything kept must be a copy.
        return t.detach().to("cpu", dtype, copy=True)

    for images, targets in loader:
        output = forward_in_chunks(forward, images.to(device, non_blocking=True), chunk)
        if isinstance(output, tuple):
            features.append(keep(output[0], torch.float32))
            logits.append(keep(output[2], torch.float32))
        else:
            features.append(keep(output, torch.float32))
        labels.append(keep(targets.reshape(-1), torch.long))
        seen += images.shape[0]
        if max_images is not None and seen >= max_images:
            break
    cut = slice(0, max_images)
    return (
        torch.cat(features)[cut],
        torch.cat(labels)[cut],
        torch.cat(logits)[cut] if logits else None,
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()
