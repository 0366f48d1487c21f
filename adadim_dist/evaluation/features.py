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
def collect_outputs(forward, loader, device, positions: tuple[int, ...], dtype: torch.dtype = torch.float32,
                    max_images: int | None = None):
    """([the outputs of ``forward`` at ``positions``], labels) over the first ``max_images`` images of ``loader``,
    on the CPU in ``dtype``. ``forward`` returns a tuple, or one tensor (position 0); an output it does not give
    is None, and so are the labels of a loader that yields images alone."""
    kept: dict[int, list[torch.Tensor]] = {position: [] for position in positions}
    labels, seen = [], 0
    chunk = forward_batch_for(device)

    def copy_out(t: torch.Tensor, as_dtype: torch.dtype) -> torch.Tensor:
        # FFCV hands out views into buffers it reuses a few batches later; anything kept must be a copy.
        return t.detach().to("cpu", as_dtype, copy=True)

    for batch in loader:
        images, targets = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        output = forward_in_chunks(forward, images.to(device, non_blocking=True), chunk)
        output = output if isinstance(output, tuple) else (output,)
        for position in positions:
            if position < len(output) and output[position] is not None:
                kept[position].append(copy_out(output[position], dtype))
        if targets is not None:
            labels.append(copy_out(targets.reshape(-1), torch.long))
        seen += images.shape[0]
        if max_images is not None and seen >= max_images:
            break
    cut = slice(0, max_images)
    outputs = [torch.cat(kept[position])[cut] if kept[position] else None for position in positions]
    return outputs, (torch.cat(labels)[cut] if labels else None)


def extract(forward, loader, device, max_images: int | None = None):
    """(features, labels, probe logits or None) over an evaluation loader yielding (images, labels); ``forward``
    is a whole model returning (R, Z, logits) or an encoder returning R."""
    (features, logits), labels = collect_outputs(forward, loader, device, (0, 2), torch.float32, max_images)
    return features, labels, logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()
