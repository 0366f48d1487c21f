"""One evaluation path for the training worker (``OnlineEvaluation``) and ``python -m adadim_dist.evaluate``:
frozen features, kNN (on one process or merged across ranks), label-free statistics, spectra, the offline
linear evaluation, the baselines and their cache, and the encoder export."""

from .features import CPU_FORWARD_BATCH, accuracy, extract, forward_batch_for, forward_in_chunks
from .knn import knn_top1, knn_top1_across_ranks, knn_top1_for_each_k, merge_neighbours, nearest_neighbours
from .label_free import LABEL_FREE_IMAGES, evaluate_label_free, label_free_embeddings, label_free_metrics
from .linear import linear_probe_top1

__all__ = [
    "CPU_FORWARD_BATCH",
    "LABEL_FREE_IMAGES",
    "accuracy",
    "evaluate_label_free",
    "extract",
    "forward_batch_for",
    "forward_in_chunks",
    "knn_top1",
    "knn_top1_across_ranks",
    "knn_top1_for_each_k",
    "label_free_embeddings",
    "label_free_metrics",
    "linear_probe_top1",
    "merge_neighbours",
    "nearest_neighbours",
]
