"""FFCV Loader factories: the two-view SSL loader for training and the single-view loader for evaluation.

Everything cheap is checked before the Loader is built (the Loader JIT-compiles its pipeline on the first
epoch, 35–45 s per process): arguments, the process group, the file (:func:`check_beton`), and that each
worker gets at least one batch.

Epochs. FFCV's Loader counts epochs itself (``next_epoch``, incremented by each ``iter``); the traversal
order, and through it every augmentation (see :mod:`.ops`), is a function of (seed, epoch, rank). To resume
at epoch ``e`` call ``set_epoch(e)`` before iterating; calling it every epoch, as with PyTorch's
``DistributedSampler``, is equally fine.

Batches are views into FFCV's rotating buffers (``batches_ahead + 2`` slots): use a batch, or ``clone()`` it,
before requesting several more.

Sharding. ``distributed=True`` uses FFCV's own sharding (``DistributedSampler`` over the selected indices),
which reads rank and world size from the ``torch.distributed`` process group: build the loader inside the
worker after ``init_process_group``, with the same ``seed`` on every rank. As with ``DistributedSampler``,
when the sample count is not divisible by the world size a few samples are repeated to even out the shards.
FFCV's ``QUASI_RANDOM`` order does not support ``distributed=True`` in 1.0.2, so training uses ``RANDOM``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .._files import replace_atomically
from ..config import DataConfig
from .beton import BetonInfo, check_beton

logger = logging.getLogger(__name__)

#: How long to wait for FFCV's loader thread between liveness checks.
_POLL_SECONDS = 1.0
#: How long ``close`` waits for FFCV's loader thread to notice the stop request.
_STOP_TIMEOUT_SECONDS = 120.0


# ---------------------------------------------------------------------------------------------- caching
def stage_to_cache(path: str | Path, cache_dir: str | Path) -> Path:
    """Copy ``path`` into ``cache_dir`` (node-local disk) unless an identical copy is there; return the copy.

    "Identical" means same size and modification time (``copy2`` preserves the time). The copy goes to a
    temporary file first and is renamed into place, so concurrent workers on one node never open a
    half-copied file. The copy's name carries a hash of the source's absolute path, so two files with the
    same name in different directories do not overwrite each other.
    """
    path, cache_dir = Path(path), Path(cache_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .beton file")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    target = cache_dir / f"{path.stem}-{tag}{path.suffix}"
    source_stat = path.stat()
    if target.is_file():
        target_stat = target.stat()
        if target_stat.st_size == source_stat.st_size and target_stat.st_mtime_ns == source_stat.st_mtime_ns:
            return target
    replace_atomically(target, lambda temporary: shutil.copy2(path, temporary))
    logger.info("copied %s to %s", path, target)
    return target


# --------------------------------------------------------------------------------------------- wrappers
class _FFCVBatches:
    """An FFCV Loader whose iteration cannot hang on a dead loader thread and stops its thread when left early.

    FFCV 1.0.2's ``EpochIterator`` computes batches in a thread; if that thread raises, ``next`` waits
    forever, and leaving an epoch early leaves the thread running (a process that exits then can abort).
    Iteration here polls the thread's liveness while waiting and, when the loop ends early, asks the
    thread to stop and joins it.
    """

    def __init__(self, loader, info: BetonInfo):
        self._loader = loader
        self.info = info
        self._output_names = list(loader.pipeline_specs)
        self._active = None

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        return len(self._loader)

    @property
    def batch_size(self) -> int:
        return self._loader.batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next iteration produces."""
        return self._loader.next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (its order and augmentations); for resuming."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._loader.next_epoch = int(epoch)

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        from . import _ffcv  # noqa: F401  (before any ffcv import)
        from ffcv.loader.epoch_iterator import IS_CUDA

        iterator = iter(self._loader)
        self._active = iterator
        finished = False
        try:
            while True:
                try:
                    entry = iterator.output_queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if iterator.is_alive():
                        continue
                    try:  # the thread may have queued its last item just before exiting
                        entry = iterator.output_queue.get_nowait()
                    except queue.Empty:
                        raise RuntimeError(
                            f"{self.info.path}: FFCV's loader thread stopped in the middle of an epoch "
                            "(its exception is printed above)"
                        ) from None
                if entry is None:
                    finished = True
                    return
                slot, result = entry
                if IS_CUDA:
                    iterator.current_stream.wait_stream(iterator.cuda_streams[slot])
                yield dict(zip(self._output_names, result))
        finally:
            self._active = None
            if not finished:
                _stop_epoch_thread(iterator)
            iterator.close()

    def close(self) -> None:
        """Stop an epoch in progress (its thread is joined); the loader can be iterated again afterwards."""
        iterator = self._active
        if iterator is not None:
            _stop_epoch_thread(iterator)
            iterator.close()
            self._active = None


def _stop_epoch_thread(iterator) -> None:
    """Ask FFCV's epoch thread to stop and wait until it has.

    The thread checks its terminate event only when a (0.5 s) put into the full output queue times out, and
    its final ``put(None)`` has no timeout at all: so wait, and when the queue is full and the thread still
    runs, take one batch out to unblock it.
    """
    iterator.terminate_event.set()
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    while iterator.is_alive():
        iterator.join(timeout=0.6)
        if iterator.is_alive() and iterator.output_queue.full():
            try:
                iterator.output_queue.get_nowait()
            except queue.Empty:
                pass
        if time.monotonic() > deadline:
            logger.warning("FFCV's loader thread did not stop within %.0f s", _STOP_TIMEOUT_SECONDS)
            return


class TwoViewLoader(_FFCVBatches):
    """Yields ``(view_a, view_b, label)`` per batch: float32 N×C×H×W views, int64 labels (None if unlabelled)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        from .views import LABEL, VIEW_A, VIEW_B

        for batch in self._batches():
            yield batch[VIEW_A], batch[VIEW_B], batch.get(LABEL)


class EvalLoader(_FFCVBatches):
    """Yields ``(images, labels)`` per batch in file order: float32 N×C×H×W, int64 labels."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from .views import LABEL, VIEW_A

        for batch in self._batches():
            yield batch[VIEW_A], batch.get(LABEL)


class RawEvalLoader:
    """``EvalLoader``'s batches, bit for bit, for a file whose images are stored raw at exactly the evaluation
    size: there the evaluation view (the centred square resized to its own size) is the image itself, so the
    pixels are read straight from the memory-mapped file and normalised by the same compiled kernel as
    ``NormalizeToTensor``. No FFCV pipeline is compiled: that costs ~1 s per loader and process, at the first
    batch, i.e. in the job's evaluation tail. Batches are fresh tensors (not views into reused buffers)."""

    def __init__(self, path: Path, info: BetonInfo, data_ptrs: np.ndarray, labels: np.ndarray | None,
                 batch_size: int, image_size: int, mean, std, device: torch.device | str | None = None):
        self.info = info
        self._device = None if device is None or torch.device(device).type == "cpu" else torch.device(device)
        self.batch_size = batch_size
        self._path, self._data_ptrs, self._labels = path, data_ptrs, labels
        self._pixel_offsets = np.arange(image_size * image_size * 3, dtype=np.int64)
        self._shape = (image_size, image_size, 3)
        self._mean = (np.asarray(mean, dtype=np.float64) * 255.0).astype(np.float32)  # as NormalizeToTensor
        self._inv_std = (1.0 / (np.asarray(std, dtype=np.float64) * 255.0)).astype(np.float32)

    def __len__(self) -> int:
        return -(-len(self._data_ptrs) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        from .ops import _NORMALIZE

        kernel = _NORMALIZE.select()
        file = np.memmap(self._path, dtype=np.uint8, mode="r")
        for start in range(0, len(self._data_ptrs), self.batch_size):
            ptrs = self._data_ptrs[start : start + self.batch_size].astype(np.int64)
            pixels = file[ptrs[:, None] + self._pixel_offsets].reshape(len(ptrs), *self._shape)
            images = np.empty((len(ptrs), self._shape[2], *self._shape[:2]), dtype=np.float32)
            kernel(pixels, images, self._mean, self._inv_std)
            batch = torch.from_numpy(images)
            labels = None if self._labels is None else torch.from_numpy(self._labels[start : start + len(ptrs)])
            if self._device is not None:
                batch = batch.to(self._device, non_blocking=True)
                labels = None if labels is None else labels.to(self._device, non_blocking=True)
            yield batch, labels

    def close(self) -> None:
        """Nothing to stop (``EvalLoader``'s interface)."""


def _raw_eval_loader(data_cfg: DataConfig, path: Path, info: BetonInfo, batch_size: int, labels: bool,
                     indices: np.ndarray | None, device=None) -> RawEvalLoader | None:
    """A ``RawEvalLoader`` when every chosen image is stored raw at ``data_cfg.image_size`` × ``image_size``;
    None otherwise (JPEG or other sizes: those need the FFCV pipeline's decoder and resize)."""
    from . import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.fields.rgb_image import IMAGE_MODES

    chosen = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
    images = info.images[chosen]
    size = data_cfg.image_size
    if not (np.all(images["mode"] == IMAGE_MODES["raw"]) and np.all(images["height"] == size)
            and np.all(images["width"] == size)):
        return None
    label_values = info.labels[chosen].astype(np.int64) if labels else None
    return RawEvalLoader(path, info, images["data_ptr"], label_values, batch_size, size, data_cfg.mean, data_cfg.std,
                         device)


# -------------------------------------------------------------------------------------------- factories
def _check_process_group(rank: int, world_size: int) -> None:
    # FFCV shards with DistributedSampler, which reads the default process group; a group that disagrees
    # with the rank/world size the caller believes in would silently give wrong shards.
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs an initialised torch.distributed process group "
                           "(FFCV shards with DistributedSampler): build the loader inside the worker")  # fmt: skip
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ValueError(f"rank/world_size ({rank}/{world_size}) disagree with the process group "
                         f"({dist.get_rank()}/{dist.get_world_size()})")  # fmt: skip


def _open_checked(path: Path, cache_dir: Path | None, need_labels: bool) -> tuple[Path, BetonInfo]:
    if cache_dir is not None:
        check_beton(path, need_labels=need_labels)  # fail on the source, not on a copy of it
        path = stage_to_cache(path, cache_dir)
    return path, check_beton(path, need_labels=need_labels)


def _selected_indices(info: BetonInfo, subset: int | None) -> np.ndarray | None:
    if subset is None:
        return None
    if subset > info.num_samples:
        logger.warning("data.subset=%d exceeds the %d images in %s; using all", subset, info.num_samples, info.path)
        return None
    return np.arange(subset, dtype=np.int64)


def _build_loader(
    path: Path,
    info: BetonInfo,
    pipelines: dict,
    *,
    batch_size: int,
    num_workers: int,
    order_name: str,
    seed: int,
    distributed: bool,
    drop_last: bool,
    indices: np.ndarray | None,
):
    from . import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.loader import Loader, OrderOption

    for field in info.fields:  # decode only what is asked for
        pipelines.setdefault(field, None)
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption[order_name],
        distributed=distributed,
        seed=seed,
        indices=indices,
        pipelines=pipelines,
        drop_last=drop_last,
    )


def _check_common(batch_size: int, rank: int, world_size: int, distributed: bool) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if distributed:
        _check_process_group(rank, world_size)


def _samples_per_rank(count: int, world_size: int, distributed: bool) -> int:
    return -(-count // world_size) if distributed else count  # DistributedSampler pads to equal shards


def build_ssl_loader(
    data_cfg: DataConfig,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    distributed: bool,
    device: torch.device | str | None = None,
) -> TwoViewLoader:
    """The training loader over ``data_cfg.train_path``: random order, ``drop_last``, two seeded views.

    ``batch_size`` is per worker. With ``distributed=True`` each rank reads its shard (see the module
    docstring); ``distributed=False`` needs ``world_size == 1``. ``device`` (e.g. ``"cuda:0"``) moves the
    views there inside the pipeline. ``data_cfg.subset`` keeps the first N images; ``data_cfg.cache_dir``
    copies the file to local disk first.
    """
    from .views import LABEL, build_label_pipeline, build_two_view_specs

    _check_common(batch_size, rank, world_size, distributed)
    if not distributed and world_size != 1:
        raise ValueError(f"world_size={world_size} with distributed=False would give every worker the whole "
                         "dataset; pass distributed=True")  # fmt: skip
    path, info = _open_checked(Path(data_cfg.train_path), data_cfg.cache_dir, need_labels=False)
    indices = _selected_indices(info, data_cfg.subset)
    count = info.num_samples if indices is None else len(indices)
    per_rank = _samples_per_rank(count, world_size, distributed)
    if per_rank < batch_size:
        raise ValueError(
            f"{data_cfg.train_path}: {count} training images give {per_rank} per worker, fewer than one batch "
            f"of {batch_size} (drop_last); lower the batch size or raise data.subset"
        )
    pipelines = build_two_view_specs(data_cfg, seed, device)
    if info.has_labels:
        pipelines[LABEL] = build_label_pipeline(device)
    loader = _build_loader(path, info, pipelines, batch_size=batch_size, num_workers=data_cfg.num_loader_workers,
                           order_name="RANDOM", seed=seed, distributed=distributed, drop_last=True,
                           indices=indices)  # fmt: skip
    return TwoViewLoader(loader, info)


def build_eval_loader(
    data_cfg: DataConfig,
    path: str | Path,
    batch_size: int,
    rank: int,
    world_size: int,
    distributed: bool,
    device: torch.device | str | None = None,
    labels: bool = True,
    indices: np.ndarray | None = None,
) -> EvalLoader | RawEvalLoader:
    """A deterministic loader over ``path`` (train or test file): centre view, labels (None with
    ``labels=False``, for unlabelled files), file order, no drop.

    With ``distributed=True`` ranks read interleaved shards (padded with repeats to equal length, as
    ``DistributedSampler`` does); with ``distributed=False`` every rank reads the whole file.
    ``data_cfg.subset`` is not applied: evaluation sees every image, or the images at ``indices`` (in that
    order; ``distributed=False`` only), e.g. one rank's part of an evaluation split across ranks.
    With ``distributed=False``, images stored raw at ``data_cfg.image_size`` are read without an FFCV pipeline
    (``RawEvalLoader``: the same batches, no per-loader compilation).
    """
    from .views import LABEL, VIEW_A, build_eval_spec, build_label_pipeline

    _check_common(batch_size, rank, world_size, distributed)
    if indices is not None and distributed:
        raise ValueError("indices and distributed=True both choose a rank's images: pass one of them")
    path, info = _open_checked(Path(path), data_cfg.cache_dir, need_labels=labels)
    if indices is not None and len(indices) and not 0 <= np.min(indices) <= np.max(indices) < info.num_samples:
        raise ValueError(f"{path}: indices outside the file's {info.num_samples} images")
    if not distributed:
        raw = _raw_eval_loader(data_cfg, path, info, batch_size, labels, indices, device)
        if raw is not None:
            return raw
    pipelines = {VIEW_A: build_eval_spec(data_cfg, device)}
    if labels:
        pipelines[LABEL] = build_label_pipeline(device)
    loader = _build_loader(path, info, pipelines, batch_size=batch_size, num_workers=data_cfg.num_loader_workers,
                           order_name="SEQUENTIAL", seed=0, distributed=distributed, drop_last=False,
                           indices=None if indices is None else np.asarray(indices, dtype=np.int64))  # fmt: skip
    return EvalLoader(loader, info)


def build_preview_loader(data_cfg: DataConfig, path: str | Path, num_images: int, seed: int):
    """Both views (plus the plain centre view) of the first ``num_images`` images, in file order, one batch."""
    from .views import VIEW_A, VIEW_B, build_eval_spec, build_two_view_specs

    path, info = _open_checked(Path(path), None, need_labels=False)
    num_images = min(num_images, info.num_samples)
    pipelines = build_two_view_specs(data_cfg, seed)
    original = build_eval_spec(data_cfg.model_copy(update={"mean": (0.0,) * 3, "std": (1.0 / 255,) * 3}))
    pipelines["original"] = original
    loader = _build_loader(path, info, pipelines, batch_size=num_images, num_workers=1, order_name="SEQUENTIAL",
                           seed=seed, distributed=False, drop_last=False,
                           indices=np.arange(num_images, dtype=np.int64))  # fmt: skip
    batches = _FFCVBatches(loader, info)
    for batch in batches._batches():
        return batch[VIEW_A].clone(), batch[VIEW_B].clone(), batch["original"].clone()
    raise ValueError(f"{path}: no images to preview")
