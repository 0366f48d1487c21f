"""kNN and feature extraction: closed-form accuracy, and copies of batches FFCV will overwrite."""

import pytest
import torch

from adadim_dist.evaluation import (CPU_FORWARD_BATCH, accuracy, extract, forward_batch_for, forward_in_chunks,
                                    knn_top1, knn_top1_for_each_k)
from adadim_dist.evaluation.label_free import label_free_embeddings


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


def test_label_free_embeddings_copy_reused_buffers_of_an_unlabelled_loader_and_stop_at_the_limit():
    """The label-free path reads the same extraction: images alone (no labels), R and Z in float64, copies of
    FFCV's reused buffers, the first ``limit`` images; an encoder alone gives R and no Z."""
    images = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    unlabelled = (images_only for images_only, _ in reusing_loader(images, torch.zeros(10, dtype=torch.long), 3))
    r, z = label_free_embeddings(lambda x: (x, -x, None), unlabelled, "cpu", limit=7)
    assert r.dtype == z.dtype == torch.float64
    assert torch.equal(r, images[:7].double()) and torch.equal(z, -images[:7].double())
    r, z = label_free_embeddings(lambda x: x + 1, reusing_loader(images, torch.arange(10), 4), "cpu", limit=100)
    assert torch.equal(r, images.double() + 1) and z is None


def test_a_cpu_evaluation_passes_at_most_cpu_forward_batch_images_and_keeps_every_output():
    """A loader batch of 512 reaches the model in passes of CPU_FORWARD_BATCH; the tuple a full model returns
    (R, Z, logits) and a tensor an encoder returns are put back together in order."""
    sizes = []

    def model(x):
        sizes.append(x.shape[0])
        flat = x.flatten(1)
        return flat, 2 * flat, 3 * flat[:, :1]

    images = torch.randn(1100, 3, 2, 2, dtype=torch.float32)  # what extract keeps
    labels = torch.arange(1100) % 7
    batches = [(images[i : i + 512], labels[i : i + 512]) for i in range(0, 1100, 512)]
    features, kept_labels, logits = extract(model, batches, torch.device("cpu"))
    assert max(sizes) == CPU_FORWARD_BATCH and sum(sizes) == 1100
    assert torch.equal(features, images.flatten(1)) and torch.equal(kept_labels, labels)
    assert torch.equal(logits, 3 * images.flatten(1)[:, :1])
    encoder_output = forward_in_chunks(lambda x: x.flatten(1) + 1, images, 100)
    assert torch.equal(encoder_output, images.flatten(1) + 1)


def test_gpus_take_the_loaders_whole_batch():
    assert forward_batch_for("cpu") == CPU_FORWARD_BATCH
    assert forward_batch_for(torch.device("cuda", 0)) is None
    calls = []
    forward_in_chunks(lambda x: calls.append(x.shape[0]) or x, torch.zeros(512, 3), None)
    assert calls == [512]


def test_accuracy():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert abs(accuracy(logits, torch.tensor([1, 0, 0])) - 100.0 * 2 / 3) < 1e-4


def test_per_class_accuracy_is_each_class_share_of_correct_votes_and_averages_to_the_total():
    from adadim_dist.evaluation.knn import class_top1, weighted_vote_top1

    # 6 queries of classes 0, 0, 1, 1, 1, 2; each has 3 neighbours (similarities largest first).
    similarities = torch.tensor([[0.9, 0.5, 0.1]] * 6)
    neighbours = torch.tensor([[0, 0, 1], [1, 1, 0], [1, 2, 2], [1, 0, 0], [2, 2, 1], [2, 0, 0]])
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    # k = 1: the nearest neighbour decides: right for queries 0, 2, 3, 5.
    assert class_top1(similarities, neighbours, labels, 1, 0.07, 3) == pytest.approx({0: 50.0, 1: 200 / 3, 2: 100.0})
    # k = 3 at T = 1: two far neighbours outvote the nearest (e^0.5 + e^0.1 = 2.75 > e^0.9 = 2.46), so only
    # query 0 (neighbours 0, 0, 1) is right.
    per_class = class_top1(similarities, neighbours, labels, 3, 1.0, 3)
    assert per_class == {0: 50.0, 1: 0.0, 2: 0.0}
    total = weighted_vote_top1(similarities, neighbours, labels, (3,), 1.0, 3)[3]
    assert total == pytest.approx(sum(per_class[c] * (labels == c).sum().item() for c in per_class) / 6)
