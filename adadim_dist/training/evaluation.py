"""Label-based evaluation of frozen features: weighted kNN (Wu et al. 2018) and probe accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (%) of a cosine-similarity kNN whose votes are weighted by exp(sim / T)."""
    return knn_top1_for_each_k(train_features, train_labels, test_features, test_labels, (k,), temperature,
                               num_classes, chunk_size)[k]


def knn_top1_for_each_k(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...],
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """``knn_top1`` for every k in ``ks`` from one similarity product: the evaluation's largest cost (queries ×
    bank × features) is paid once, and each k reads the first k of the largest k's neighbours."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("knn: empty feature bank or test set")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    similarity, labels = nearest_neighbours(train_features, train_labels, test_features, max(ks), chunk_size)
    return weighted_vote_top1(similarity, labels, test_labels, ks, temperature, num_classes)


@torch.no_grad()
def nearest_neighbours(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (float32, largest first) and labels of each query's ``k`` nearest bank entries:
    two (queries × k) tensors. A bank of fewer than ``k`` entries is padded with similarity -inf (no vote), so a
    bank split across ranks gives parts that ``merge_neighbours`` combines into the whole bank's answer."""
    similarities = torch.full((queries.shape[0], k), float("-inf"))
    labels = torch.zeros((queries.shape[0], k), dtype=torch.long)
    found = min(k, bank.shape[0])
    if found == 0:
        return similarities, labels
    bank = F.normalize(bank.float(), dim=1)
    for start in range(0, queries.shape[0], chunk_size):
        chunk = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        top, index = (chunk @ bank.T).topk(found, dim=1)  # sorted, largest first
        similarities[start : start + chunk.shape[0], :found] = top.cpu()
        labels[start : start + chunk.shape[0], :found] = bank_labels[index].long().cpu()
    return similarities, labels


def merge_neighbours(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest over several banks from each bank's ``nearest_neighbours``."""
    similarities = torch.cat([similarity for similarity, _ in parts], dim=1)
    labels = torch.cat([label for _, label in parts], dim=1)
    top, index = similarities.topk(k, dim=1)
    return top, labels.gather(1, index)


def weighted_vote_top1(
    similarities: torch.Tensor,
    neighbour_labels: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...],
    temperature: float,
    num_classes: int,
) -> dict[int, float]:
    """Top-1 accuracy (%) for each k of votes weighted by exp(similarity / T) over each query's first k
    neighbours (``nearest_neighbours`` order; -inf padding weighs nothing)."""
    weights = (similarities / temperature).exp()
    correct = {}
    for k in ks:
        votes = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
        correct[k] = (votes.argmax(dim=1) == test_labels.cpu()).sum().item()
    return {k: 100.0 * correct[k] / max(similarities.shape[0], 1) for k in ks}


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
