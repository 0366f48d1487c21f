"""The FFCV loaders on real .beton files: views, seeding, epochs, resume, sharding, evaluation, preview.

Every Loader JIT-compiles its pipeline, so loaders are module-scoped and few. The SSL loader reads the
index file (label = sample index), so each batch says which samples it holds.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from adadim_dist.config import DataConfig
from adadim_dist.data.__main__ import main
from adadim_dist.data import loader as loader_module
from adadim_dist.data.loader import EvalLoader, RawEvalLoader, build_eval_loader, build_ssl_loader, stage_to_cache
from adadim_dist.data.writer import to_rgb

from ._dist import collect_shard_indices, run_ranks
from .conftest import NUM_IMAGES

BATCH = 128
SEED = 123

# numba 0.68 can print "Exception ignored in: <finalize object ...> KeyError" when a dropped Loader's
# compiled decoder is garbage-collected while another Loader compiles; it is noise, not a failure.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <finalize object:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="module")
def ssl_cfg(index_beton, fmnist_beton) -> DataConfig:
    """Every augmentation switched on somewhere: blur in view a, blur and solarize in view b."""
    return DataConfig(
        train_path=index_beton,
        test_path=fmnist_beton,
        num_loader_workers=1,
        view_a={"blur_prob": 1.0},
        view_b={"blur_prob": 0.1, "solarize_prob": 0.2},
    )


@pytest.fixture(scope="module")
def ssl_loader(ssl_cfg):
    return build_ssl_loader(ssl_cfg, BATCH, rank=0, world_size=1, seed=SEED, distributed=False)


def collect(loader, epoch: int):
    """All (view_a, view_b, sample index) of one epoch, cloned out of FFCV's rotating buffers."""
    loader.set_epoch(epoch)
    view_a, view_b, index = zip(*[(a.clone(), b.clone(), y.clone()) for a, b, y in loader])
    return torch.cat(view_a), torch.cat(view_b), torch.cat(index)


def by_index(views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return views[torch.argsort(index)]


@pytest.fixture(scope="module")
def epoch0(ssl_loader):
    return collect(ssl_loader, 0)


@pytest.fixture(scope="module")
def epoch1(ssl_loader):
    return collect(ssl_loader, 1)


@pytest.mark.integration
def test_views_are_normalised_float_nchw_and_every_sample_comes_once(epoch0, ssl_cfg):
    view_a, view_b, index = epoch0
    assert view_a.shape == view_b.shape == (NUM_IMAGES, 3, 32, 32) and view_a.dtype == torch.float32
    assert torch.equal(torch.sort(index).values, torch.arange(NUM_IMAGES))
    pixels = view_a * torch.tensor(ssl_cfg.std).view(1, 3, 1, 1) + torch.tensor(ssl_cfg.mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4  # de-normalises into [0, 1]
    assert not torch.equal(index, torch.arange(NUM_IMAGES))  # random order


@pytest.mark.integration
def test_two_views_of_one_image_differ(epoch0):
    """Catches both views sharing a seed (they would be identical, and the SSL loss trivial)."""
    view_a, view_b, _ = epoch0
    same = (view_a == view_b).flatten(1).all(dim=1)
    assert same.float().mean() < 0.02


@pytest.mark.integration
def test_epochs_differ_in_order_and_augmentation(epoch0, epoch1):
    """Catches augmentations that repeat every epoch (randomness not tied to the epoch)."""
    assert not torch.equal(epoch0[2], epoch1[2])
    same = (by_index(epoch0[0], epoch0[2]) == by_index(epoch1[0], epoch1[2])).flatten(1).all(dim=1)
    assert same.float().mean() < 0.02


@pytest.mark.integration
def test_new_loader_with_same_seed_resumes_epoch_exactly(ssl_cfg, ssl_loader, epoch1):
    """A restarted worker (new Loader, same seed, set_epoch(1)) must see exactly the batches of epoch 1."""
    resumed = build_ssl_loader(ssl_cfg, BATCH, rank=0, world_size=1, seed=SEED, distributed=False)
    replay = collect(resumed, 1)
    for got, expected in zip(replay, epoch1):
        assert torch.equal(got, expected)
    assert ssl_loader.epoch == 2 and resumed.epoch == 2
    assert torch.equal(collect(ssl_loader, 1)[0], epoch1[0])  # the same loader replays too


@pytest.mark.integration
def test_leaving_an_epoch_early_stops_ffcvs_thread(ssl_loader):
    """An early ``break`` (max_steps_per_epoch) must not leave FFCV's thread running into process exit."""
    from ffcv.loader.epoch_iterator import EpochIterator

    ssl_loader.set_epoch(3)
    for step, (view_a, _, _) in enumerate(ssl_loader):
        assert view_a.shape[0] == BATCH
        break
    assert not any(isinstance(t, EpochIterator) and t.is_alive() for t in threading.enumerate())
    assert sum(1 for _ in ssl_loader) == len(ssl_loader) == NUM_IMAGES // BATCH


@pytest.mark.integration
def test_subset_and_cache_dir(ssl_cfg, tmp_path):
    cfg = ssl_cfg.model_copy(update={"subset": 256, "cache_dir": tmp_path / "cache"})
    loader = build_ssl_loader(cfg, 64, rank=0, world_size=1, seed=SEED, distributed=False)
    index = torch.cat([y.clone() for _, _, y in loader])
    assert len(loader) == 4 and torch.equal(torch.sort(index).values, torch.arange(256))
    (copy,) = (tmp_path / "cache").iterdir()
    assert loader.info.path == copy and copy.stat().st_size == ssl_cfg.train_path.stat().st_size


def test_stage_to_cache_copies_once_and_again_when_the_source_changes(tmp_path):
    source = tmp_path / "src" / "a.beton"
    source.parent.mkdir()
    source.write_bytes(b"x" * 100)
    copy = stage_to_cache(source, tmp_path / "cache")
    inode = copy.stat().st_ino
    assert stage_to_cache(source, tmp_path / "cache").stat().st_ino == inode  # same size and time: kept
    source.write_bytes(b"y" * 120)
    assert stage_to_cache(source, tmp_path / "cache").read_bytes() == b"y" * 120
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary files left


@pytest.mark.integration
def test_eval_loader_gives_file_order_labels_and_exact_pixels(ssl_cfg, fmnist_beton, fmnist_train):
    loader = build_eval_loader(ssl_cfg, fmnist_beton, batch_size=100, rank=0, world_size=1, distributed=False)
    batches = [(x.clone(), y.clone()) for x, y in loader]
    assert [len(y) for _, y in batches] == [100] * 5 + [12]  # drop_last=False
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, torch.from_numpy(fmnist_train.labels))
    stored = np.stack([to_rgb(image, 32) for image in fmnist_train.images[:4]]).transpose(0, 3, 1, 2) / 255.0
    expected = (stored - np.array(ssl_cfg.mean)[:, None, None]) / np.array(ssl_cfg.std)[:, None, None]
    np.testing.assert_allclose(images[:4].numpy(), expected, atol=1e-5)


@pytest.mark.integration
def test_jpeg_stored_images_of_varying_size_decode_to_the_centre_view(ssl_cfg, tmp_path):
    """Image folders store large images as JPEG: exercises the decoder's JPEG branch and the centre crop."""
    from ffcv.reader import Reader
    from PIL import Image

    from adadim_dist.data.sources import read_source
    from adadim_dist.data.writer import write_beton

    y, x = np.mgrid[0:80, 0:96]
    originals = [np.stack([x * 2, y * 3, (x + y)], axis=-1).astype(np.uint8), np.full((100, 70, 3), 200, np.uint8)]
    for i, image in enumerate(originals):
        (tmp_path / "src" / "train" / f"c{i}").mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "src" / "train" / f"c{i}" / "a.png")
    path = tmp_path / "jpeg.beton"
    write_beton(read_source("imagefolder", "train", tmp_path / "src"), path, progress=False)
    assert (Reader(str(path)).metadata["f0"]["mode"] == 0).all()  # 0 = JPEG

    loader = build_eval_loader(ssl_cfg, path, batch_size=2, rank=0, world_size=1, distributed=False)
    (images, labels), = [(x.clone(), y.clone()) for x, y in loader]
    mean, std = np.array(ssl_cfg.mean)[:, None, None], np.array(ssl_cfg.std)[:, None, None]
    for image, original in zip(images.numpy(), originals):
        side = min(original.shape[:2])
        top, left = (original.shape[0] - side) // 2, (original.shape[1] - side) // 2
        centre = cv2.resize(original[top : top + side, left : left + side], (32, 32), interpolation=cv2.INTER_AREA)
        pixels = (image * std + mean) * 255
        assert np.abs(pixels - centre.transpose(2, 0, 1)).mean() < 3  # JPEG quality 90
    assert labels.tolist() == [0, 1]


def test_eval_loader_over_indices_gives_exactly_that_part_in_order(ssl_cfg, fmnist_beton, fmnist_train):
    """One rank's part of an evaluation split across ranks: a contiguous range of the file, nothing else."""
    part = build_eval_loader(ssl_cfg, fmnist_beton, batch_size=64, rank=0, world_size=1, distributed=False,
                             indices=np.arange(200, 341))
    labels = torch.cat([y.clone() for _, y in part])
    assert torch.equal(labels, torch.from_numpy(fmnist_train.labels[200:341]))
    with pytest.raises(ValueError, match="indices outside the file's 512 images"):
        build_eval_loader(ssl_cfg, fmnist_beton, 64, 0, 1, False, indices=np.arange(500, 513))


@pytest.mark.integration
def test_raw_images_at_the_evaluation_size_are_read_without_a_pipeline_bit_for_bit(ssl_cfg, fmnist_beton, monkeypatch):
    """Raw 32×32 images evaluated at 32×32: the centre view is the image, read straight from the file, and the
    batches (values, dtypes, shapes, labels) equal the compiled FFCV pipeline's. Other sizes need the pipeline."""
    indices = np.arange(37, 300)
    fast = build_eval_loader(ssl_cfg, fmnist_beton, 64, 0, 1, False, indices=indices)
    assert isinstance(fast, RawEvalLoader) and len(fast) == 5
    fast_batches = [(x.clone(), y.clone()) for x, y in fast]
    resized = build_eval_loader(ssl_cfg.model_copy(update={"image_size": 24}), fmnist_beton, 64, 0, 1, False)
    assert isinstance(resized, EvalLoader)
    resized.close()
    monkeypatch.setattr(loader_module, "_raw_eval_loader", lambda *args, **kwargs: None)
    compiled = build_eval_loader(ssl_cfg, fmnist_beton, 64, 0, 1, False, indices=indices)
    assert isinstance(compiled, EvalLoader)
    compiled_batches = [(x.clone(), y.clone()) for x, y in compiled]
    compiled.close()
    assert len(fast_batches) == len(compiled_batches) == 5
    for (images, labels), (expected_images, expected_labels) in zip(fast_batches, compiled_batches):
        assert images.dtype == expected_images.dtype and torch.equal(images, expected_images)
        assert labels.dtype == expected_labels.dtype and torch.equal(labels, expected_labels)


def test_impossible_requests_fail_before_any_loader_is_built(ssl_cfg, tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_ssl_loader(ssl_cfg, 1024, rank=0, world_size=1, seed=0, distributed=False)
    with pytest.raises(ValueError, match="pass distributed=True"):
        build_ssl_loader(ssl_cfg, 8, rank=0, world_size=2, seed=0, distributed=False)
    with pytest.raises(RuntimeError, match="process group"):
        build_ssl_loader(ssl_cfg, 8, rank=0, world_size=2, seed=0, distributed=True)
    with pytest.raises(FileNotFoundError, match="no such .beton"):
        build_ssl_loader(ssl_cfg.model_copy(update={"train_path": tmp_path / "x.beton"}), 8, 0, 1, 0, False)


@pytest.mark.integration
@pytest.mark.distributed
def test_distributed_ranks_see_every_sample_exactly_once_per_epoch(index_beton, tmp_path):
    """FFCV's own sharding under a 2-process gloo group: disjoint shards covering the file, reshuffled per epoch."""
    run_ranks(collect_shard_indices, world_size=2, args=(str(index_beton), str(tmp_path)))
    for epoch in (0, 1):
        shards = [np.load(tmp_path / f"rank{rank}_epoch{epoch}.npy") for rank in (0, 1)]
        assert [len(s) for s in shards] == [NUM_IMAGES // 2] * 2
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(NUM_IMAGES))
    assert not np.array_equal(np.load(tmp_path / "rank0_epoch0.npy"), np.load(tmp_path / "rank0_epoch1.npy"))


@pytest.mark.integration
def test_preview_writes_a_png(fmnist_beton, tmp_path, capsys):
    out = tmp_path / "views.png"
    assert main(["preview", str(fmnist_beton), "--out", str(out), "--num", "4", "data.view_b.solarize_prob=1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("num", ["0", "65"])
def test_preview_refuses_a_number_of_images_that_is_not_a_figure(fmnist_beton, tmp_path, capsys, num):
    out = tmp_path / "views.png"
    assert main(["preview", str(fmnist_beton), "--out", str(out), "--num", num]) == 2
    assert capsys.readouterr().err.strip() == f"adadim_dist.data: error: --num must be between 1 and 64, got {num}"
    assert not out.exists()
