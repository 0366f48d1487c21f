"""Shared fixtures of the data tests: small real .beton files and a guard for FFCV's global compiler state.

The files are written once per session from the installed Fashion-MNIST (512 images), as tests should
exercise the real writer and real images rather than synthetic arrays where it matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adadim_dist.data.sources import ImageSet, read_source
from adadim_dist.data.writer import to_rgb, write_beton

NUM_IMAGES = 512


@pytest.fixture(scope="session")
def fmnist_train() -> ImageSet:
    """The first 512 Fashion-MNIST training images (28×28 grey) with their class labels."""
    return read_source("fashion_mnist", "train").head(NUM_IMAGES)


@pytest.fixture(scope="session")
def fmnist_beton(tmp_path_factory, fmnist_train) -> Path:
    """512 Fashion-MNIST images written as 32×32 RGB with class labels."""
    path = tmp_path_factory.mktemp("beton") / "fmnist512.beton"
    write_beton(fmnist_train, path, as_rgb32=True, progress=False)
    return path


@pytest.fixture(scope="session")
def index_beton(tmp_path_factory, fmnist_train) -> Path:
    """The same 512 images (32×32 RGB) whose label is the sample index, so a batch tells which samples it holds."""
    folder = tmp_path_factory.mktemp("index")
    images = np.stack([to_rgb(image, pad_to=32) for image in fmnist_train.images])
    np.savez(folder / "train.npz", images=images, labels=np.arange(NUM_IMAGES))
    path = folder / "index512.beton"
    write_beton(read_source("npz", "train", folder), path, progress=False)
    return path


@pytest.fixture
def restore_compiler():
    """FFCV's Compiler is process-global (and its set_num_threads also sets torch's); put it back afterwards."""
    from ffcv.pipeline.compiler import Compiler

    enabled, num_threads, torch_threads = Compiler.is_enabled, Compiler.num_threads, torch.get_num_threads()
    yield Compiler
    Compiler.set_enabled(enabled)
    Compiler.set_num_threads(num_threads)
    torch.set_num_threads(torch_threads)
