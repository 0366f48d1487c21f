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
    effective = {k: min(k, train_features.shape[0]) for k in ks}
    largest = max(effective.values())
    bank = F.normalize(train_features.float(), dim=1)
    correct = dict.fromkeys(ks, 0)
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, index = (queries @ bank.T).topk(largest, dim=1)  # sorted, largest first
        weights = (similarity / temperature).exp()
        neighbour_labels = train_labels[index].long()
        targets = test_labels[start : start + chunk_size]
        for k in ks:
            kk = effective[k]
            votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=queries.device)
            votes.scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            correct[k] += (votes.argmax(dim=1) == targets).sum().item()
    return {k: 100.0 * correct[k] / test_features.shape[0] for k in ks}


@torch.no_grad()
def extract(forward, loader, device, max_images: int | None = None):
    """(features, labels, probe logits or None) over an evaluation loader yielding (images, labels)."""
    features, labels, logits = [], [], []
    seen = 0

    def keep(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # FFCV hands out views into buffers it reuses a few batches later; anything kept must be a copy.
        return t.detach().to("cpu", dtype, copy=True)

    for images, targets in loader:
        output = forward(images.to(device, non_blocking=True))
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
