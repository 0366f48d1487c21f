"""Weighted kNN (Wu et al. 2018) on frozen features, on one process or with the bank split across ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_rows, gather_to


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
    correct = {k: (weighted_vote(similarities, neighbour_labels, k, temperature, num_classes)
                   == test_labels.cpu()).sum().item() for k in ks}
    return {k: 100.0 * correct[k] / max(similarities.shape[0], 1) for k in ks}


def weighted_vote(similarities: torch.Tensor, neighbour_labels: torch.Tensor, k: int, temperature: float,
                  num_classes: int) -> torch.Tensor:
    """Each query's class by the vote of its first k neighbours, weighted by exp(similarity / T)."""
    votes = torch.zeros(similarities.shape[0], num_classes, dtype=similarities.dtype)
    votes.scatter_add_(1, neighbour_labels[:, :k], (similarities[:, :k] / temperature).exp())
    return votes.argmax(dim=1)


def knn_top1_across_ranks(bank, bank_labels, queries, query_labels, ks: tuple[int, ...], temperature: float,
                          num_classes: int, device, shared: bool, per_class: bool = False):
    """``knn_top1_for_each_k`` when each rank holds a part of the bank and every rank all the queries
    (``shared``; a collective): each rank's nearest neighbours are merged on rank 0, which returns the
    accuracies (None elsewhere). Unshared, this rank's bank is the whole bank. Returns (those, each class's
    top-1 for the first k as ``class_top1`` gives it, or None without ``per_class``)."""
    largest = max(ks)
    similarities, labels = nearest_neighbours(bank.to(device), bank_labels.to(device), queries.to(device), largest)
    if shared:
        gathered_similarities = gather_to(similarities.to(device), 0)
        gathered_labels = gather_to(labels.to(device), 0)
        if gathered_similarities is None:
            return None, None
        similarities, labels = merge_neighbours(
            [(s.cpu(), lab.cpu()) for s, lab in zip(gathered_similarities, gathered_labels)], largest)
    top1 = weighted_vote_top1(similarities, labels, query_labels, ks, temperature, num_classes)
    return top1, (class_top1(similarities, labels, query_labels, ks[0], temperature, num_classes) if per_class
                  else None)


def class_top1(similarities: torch.Tensor, neighbour_labels: torch.Tensor, test_labels: torch.Tensor, k: int,
               temperature: float, num_classes: int) -> dict[int, float]:
    """Top-1 accuracy (%) of the first-``k`` weighted vote among the queries of each class present."""
    test_labels = test_labels.cpu()
    correct = weighted_vote(similarities, neighbour_labels, k, temperature, num_classes) == test_labels
    return {int(c): 100.0 * correct[test_labels == c].double().mean().item() for c in test_labels.unique()}


def gather_rows_with_labels(columns: list[torch.Tensor], labels: torch.Tensor, device) -> tuple[list, torch.Tensor]:
    """Every rank's rows of ``columns`` (float tensors of equal length) and ``labels``, on every rank, in one
    collective: the pieces side by side, labels as one more float32 column (exact for class indices)."""
    widths = [column.shape[1] for column in columns]
    packed = torch.cat([*columns, labels.float().unsqueeze(1)], dim=1)
    *gathered, label_column = all_gather_rows(packed.to(device)).cpu().split([*widths, 1], dim=1)
    return gathered, label_column.squeeze(1).long()
