"""kNN and feature extraction: closed-form accuracy, and copies of batches FFCV will overwrite."""

import pytest
import torch

from adadim_dist.training.evaluation import accuracy, extract, knn_top1, knn_top1_for_each_k


def test_knn_recovers_well_separated_classes_and_fails_on_shuffled_labels():
    torch.manual_seed(0)
    centres = torch.eye(4) * 10
    labels = torch.arange(4).repeat_interleave(25)
    bank = centres[labels] + torch.randn(100, 4)
    test = centres[labels] + torch.randn(100, 4)
    assert knn_top1(bank, labels, test, labels, k=5) == 100.0
    assert knn_top1(bank, labels[torch.randperm(100)], test, labels, k=5) < 60.0


def test_every_k_from_one_similarity_product_equals_a_brute_force_vote():
    """Each k reads the first k of the largest k's neighbours: the same votes as sorting all similarities."""
    torch.manual_seed(1)
    bank, bank_labels = torch.randn(300, 16), torch.randint(0, 5, (300,))
    test, test_labels = torch.randn(70, 16), torch.randint(0, 5, (70,))
    similarity = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    order = similarity.argsort(dim=1, descending=True)
    for k, value in knn_top1_for_each_k(bank, bank_labels, test, test_labels, (3, 40, 500), 0.1,
                                        chunk_size=16).items():
        kk = min(k, 300)
        votes = torch.zeros(70, 5).scatter_add_(1, bank_labels[order[:, :kk]],
                                                (similarity.gather(1, order[:, :kk]) / 0.1).exp())
        assert value == pytest.approx(100.0 * (votes.argmax(1) == test_labels).float().mean().item()), k


def reusing_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    """Like FFCV: every batch is written into the same two buffers, so a kept reference goes stale."""
    image_buffer = torch.empty(batch_size, *images.shape[1:])
    label_buffer = torch.empty(batch_size, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        n = min(batch_size, len(images) - start)
        image_buffer[:n] = images[start : start + n]
        label_buffer[:n] = labels[start : start + n]
        yield image_buffer[:n], label_buffer[:n]


def test_extract_keeps_copies_of_reused_batch_buffers():
    """Without copies, every kept label would be the last batch's (the kNN figures fell to chance)."""
    images = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    labels = torch.arange(10)
    features, kept_labels, logits = extract(lambda x: x.flatten(1), reusing_loader(images, labels, 3), "cpu")
    assert torch.equal(kept_labels, labels) and torch.equal(features, images) and logits is None


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert abs(accuracy(logits, torch.tensor([1, 0, 0])) - 100.0 * 2 / 3) < 1e-4
