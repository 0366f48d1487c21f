"""Offline linear evaluation of frozen features (pure torch).

The recipe, fixed so numbers are comparable between runs: a multinomial logistic regression on the frozen
features of the training images, fitted full-batch with L-BFGS (strong Wolfe line search, at most 200
iterations) and an L2 penalty of 1e-4 · ||W||² on the weights (not the bias), in float64 on CPU. Features are
standardised with the training images' per-dimension mean and standard deviation first; ``l2`` variants are
L2-normalised per image before that. Reported: top-1 accuracy (%) on the test images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHT_DECAY = 1e-4
MAX_ITERATIONS = 200


def prepare(features: torch.Tensor, l2_normalise: bool) -> torch.Tensor:
    features = features.double()
    return F.normalize(features, dim=1) if l2_normalise else features


@torch.no_grad()
def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-8)
    return (train - mean) / std, (test - mean) / std


def linear_probe_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, num_classes: int, l2_normalise: bool = False,
                      weight_decay: float = WEIGHT_DECAY, max_iterations: int = MAX_ITERATIONS) -> float:
    """Top-1 accuracy (%) on the test features of the logistic regression fitted on the training features."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("linear evaluation: empty training or test features")
    train, test = _standardise(prepare(train_features, l2_normalise), prepare(test_features, l2_normalise))
    train_labels, test_labels = train_labels.long(), test_labels.long()
    weight = torch.zeros(train.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, train_labels) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (test @ weight + bias).argmax(dim=1)
    return 100.0 * (predictions == test_labels).double().mean().item()
