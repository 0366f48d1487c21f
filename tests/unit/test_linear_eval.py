"""The offline linear evaluation recipe on data whose answer is known."""

import torch

from adadim_dist.evaluation.linear import linear_probe_top1


def _blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 4
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_separable_classes_are_found_and_shuffled_labels_are_not():
    train, train_labels = _blobs(60, 10, 32, 1.0, seed=0)
    test, test_labels = _blobs(30, 10, 32, 1.0, seed=0)  # same centres (same seed), fresh noise below
    test = test + 0.5 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    assert linear_probe_top1(train, train_labels, test, test_labels, 10) >= 99.0
    assert linear_probe_top1(train, train_labels, test, test_labels, 10, l2_normalise=True) >= 95.0
    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(2))]
    assert linear_probe_top1(train, shuffled, test, test_labels, 10) < 35.0


def test_the_recipe_is_deterministic_and_scale_free():
    train, train_labels = _blobs(40, 5, 16, 3.0, seed=3)
    test, test_labels = _blobs(40, 5, 16, 3.0, seed=3)
    first = linear_probe_top1(train, train_labels, test, test_labels, 5)
    assert linear_probe_top1(train, train_labels, test, test_labels, 5) == first
    # Features are standardised on the training set first: rescaling them changes nothing.
    assert abs(linear_probe_top1(100 * train, train_labels, 100 * test, test_labels, 5) - first) < 1e-9
