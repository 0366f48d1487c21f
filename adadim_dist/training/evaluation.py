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
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("knn: empty feature bank or test set")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    correct = 0
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, index = (queries @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=queries.device)
        votes.scatter_add_(1, train_labels[index].long(), weights)
        correct += (votes.argmax(dim=1) == test_labels[start : start + chunk_size]).sum().item()
    return 100.0 * correct / test_features.shape[0]


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
