"""Write an :class:`~adadim_dist.data.sources.ImageSet` to an FFCV ``.beton`` file, and check such a file.

Fields: ``image`` (``RGBImageField``: raw pixels for fixed-size sets, JPEG above a size threshold for
image folders) and ``label`` (``IntField``) when the source has labels. Grey images are repeated to three
channels (FFCV stores RGB); ``as_rgb32`` also pads them to 32×32, giving a CIFAR-shaped set.

A file is written to a temporary name in the output directory and moved into place with ``os.replace`` only
when complete, so an interrupted or failed write never leaves a half-written ``.beton`` behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import Process, Queue, Value
from pathlib import Path
from queue import Empty

import numpy as np

from .sources import BUILTIN_SOURCES, DataError, ImageSet, read_source

logger = logging.getLogger(__name__)

#: FFCV's smallest page; whole pages are written per writer process, so small sets stay small on disk.
PAGE_SIZE = 1 << 21
#: Image folders are resized so the longer side is at most this (FFCV ``max_resolution``) unless told otherwise.
DEFAULT_MAX_RESOLUTION = 256
#: Image folders: images bigger than this many raw bytes are stored as JPEG (quality 90), smaller ones raw.
JPEG_THRESHOLD_BYTES = 64 * 64 * 3


# ------------------------------------------------------------------------------------------- conversion
def to_rgb(image: np.ndarray, pad_to: int | None = None) -> np.ndarray:
    """H×W grey or H×W×3 uint8 → H'×W'×3 uint8, centred on a black ``pad_to``×``pad_to`` canvas if given."""
    if image.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise DataError(f"images must be H×W or H×W×3, got shape {image.shape}")
    if pad_to is not None:
        height, width = image.shape[:2]
        if height > pad_to or width > pad_to:
            raise DataError(f"--as-rgb32 pads small images to {pad_to}×{pad_to}; got {height}×{width} images")
        top, left = (pad_to - height) // 2, (pad_to - width) // 2
        padding = [(top, pad_to - height - top), (left, pad_to - width - left)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, padding)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


class _SamplesToWrite:
    """Indexable view of an ImageSet in the tuple form FFCV's writer wants: (image_rgb,) or (image_rgb, label)."""

    def __init__(self, image_set: ImageSet, pad_to: int | None):
        self.images = image_set.images
        self.labels = image_set.labels
        self.pad_to = pad_to

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        image = to_rgb(np.asarray(self.images[index]), self.pad_to)
        if self.labels is None:
            return (image,)
        return image, int(self.labels[index])


# ------------------------------------------------------------------------------------------------ writer
def _checked_dataset_writer_class():
    """FFCV's ``DatasetWriter`` with a write loop that notices a dead worker process.

    FFCV 1.0.2 waits for its counter of written samples to reach the total; a worker that raises (a corrupt
    image, a full disk) never increments it, so the write would hang forever. This loop checks the workers'
    exit codes while it waits, stops the others and raises, and always frees the shared metadata memory.
    Built lazily so importing this module does not import FFCV (its import is slow).
    """
    from . import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.writer import DatasetWriter, MemoryAllocator
    from tqdm import tqdm

    class CheckedDatasetWriter(DatasetWriter):
        def __init__(self, *args, progress: bool, description: str, **kwargs):
            super().__init__(*args, **kwargs)
            self.progress = progress
            self.description = description

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            self.num_samples = num_samples
            self.prepare()
            processes: list[Process] = []
            try:
                work_queue: Queue = Queue()
                for todo in queue_content:
                    work_queue.put(todo)
                for _ in range(self.num_workers):
                    work_queue.put(None)  # one stop token per worker
                allocations_queue: Queue = Queue()
                done = Value(ctypes.c_uint64, 0)
                allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
                worker_args = (work_queue, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                               allocations_queue, *extra_worker_args)  # fmt: skip
                processes = [Process(target=work_fn, args=worker_args, daemon=True) for _ in range(self.num_workers)]
                for process in processes:
                    process.start()
                shown = 0
                with tqdm(total=num_samples, desc=self.description, unit="img", disable=not self.progress) as bar:
                    while shown < num_samples:
                        written = done.value
                        if written > shown:
                            bar.update(written - shown)
                            shown = written
                        if shown == num_samples:
                            break
                        failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                        if failed:
                            raise DataError(f"a writer process failed (exit code {failed[0]}); "
                                            "its traceback is printed above")  # fmt: skip
                        if all(p.exitcode == 0 for p in processes) and done.value < num_samples:
                            raise DataError(f"writer processes stopped after {done.value} of {num_samples} images")
                        time.sleep(0.05)
                allocations = []
                for _ in processes:
                    try:
                        allocations.extend(allocations_queue.get(timeout=600))
                    except Empty:
                        raise DataError("a writer process did not report its allocations within 10 minutes") from None
                for process in processes:
                    process.join()
                self.finalize(allocations)
            finally:
                for process in processes:
                    if process.is_alive():
                        process.terminate()
                        process.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return CheckedDatasetWriter


@dataclass(frozen=True)
class WriteSummary:
    """What :func:`write_beton` wrote."""

    path: Path
    num_images: int
    num_classes: int | None
    image_shape: tuple[int, int, int] | None  # None when sizes vary (image folders)
    num_bytes: int
    seconds: float
    skipped: int = 0  # unreadable source files left out

    def line(self) -> str:
        classes = "no labels" if self.num_classes is None else f"{self.num_classes} classes"
        shape = "×".join(map(str, self.image_shape)) if self.image_shape else "varying size"
        skipped = f", {self.skipped} unreadable file(s) skipped" if self.skipped else ""
        return (f"wrote {self.path}: {self.num_images} images, {classes}, {shape}, "
                f"{self.num_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s{skipped}")  # fmt: skip


def write_beton(
    image_set: ImageSet,
    out: str | Path,
    *,
    as_rgb32: bool = False,
    limit: int | None = None,
    overwrite: bool = False,
    num_workers: int = 1,
    max_resolution: int | None = None,
    progress: bool = True,
) -> WriteSummary:
    """Write ``image_set`` (its first ``limit`` images) to ``out`` atomically and return a summary.

    Raises FileExistsError if ``out`` exists and ``overwrite`` is False, DataError for unusable images;
    on any failure the temporary file is removed and ``out`` is left as it was.
    """
    from . import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.fields import IntField, RGBImageField

    started = time.perf_counter()
    out = Path(out)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    if num_workers < 1:
        raise DataError(f"--num-workers must be at least 1, got {num_workers}")
    if out.is_dir():
        raise DataError(f"{out}: is a directory; --out names the .beton file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass --overwrite to replace it)")
    image_set = image_set.head(limit)
    pad_to = 32 if as_rgb32 else None
    samples = _SamplesToWrite(image_set, pad_to)
    first_image = samples[0][0]  # cheap check of shapes before starting processes
    fixed_shape = None
    if image_set.fixed_shape is not None:
        if max_resolution is not None:
            logger.warning("max_resolution=%d has no effect: %s images all have one size and are stored raw",
                           max_resolution, image_set.name)  # fmt: skip
        fixed_shape = tuple(first_image.shape)
        write_mode, max_resolution, jpeg_threshold = "raw", None, None
    else:
        write_mode, jpeg_threshold = "smart", JPEG_THRESHOLD_BYTES
        max_resolution = max_resolution or DEFAULT_MAX_RESOLUTION
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                     smart_threshold=jpeg_threshold)}  # fmt: skip
    if image_set.labels is not None:
        fields["label"] = IntField()

    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(handle)
    try:
        writer_class = _checked_dataset_writer_class()
        writer = writer_class(temp_name, fields, page_size=PAGE_SIZE, num_workers=min(num_workers, len(samples)),
                              progress=progress, description=f"{image_set.name} → {out.name}")  # fmt: skip
        writer.from_indexed_dataset(samples, chunksize=256)
        if out.exists() and not overwrite:  # appeared while writing: do not clobber it
            raise FileExistsError(f"{out}: appeared while writing (pass --overwrite to replace it)")
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(temp_name, out)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return WriteSummary(
        path=out,
        num_images=len(samples),
        num_classes=image_set.num_classes,
        image_shape=fixed_shape,  # type: ignore[arg-type]
        num_bytes=out.stat().st_size,
        seconds=time.perf_counter() - started,
        skipped=image_set.skipped,
    )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -------------------------------------------------------------------------------------- used by training
def ensure_beton(
    source: str,
    split: str,
    path: str | Path,
    *,
    root: str | Path | None = None,
    as_rgb32: bool = True,
    need_labels: bool = True,
    progress: bool = False,
    imbalance_ratio: float | None = None,
    rows: tuple[int, int | None] | None = None,
    config_key: str = "data.train_path",
):
    """Return the checked ``.beton`` at ``path``, writing it first from a built-in source if it is absent.

    ``rows`` = (start, stop): only those images of the split (a validation split). With ``rows`` or
    ``imbalance_ratio`` the file gets a ``<path>.split.json`` record of its origin, and an existing file without
    the same record is refused: a held-out split can never silently be some other file (such as the real test
    set), nor a long-tailed set a balanced one written earlier.

    Only the sources installed with the project (``fashion_mnist``, ``mnist``) are written on demand; for any
    other source a missing file is an error that names the ``write`` command to run. Call this once (from the
    driver or rank 0), not from every worker at once. ``imbalance_ratio`` writes a long-tailed subset
    (``ImageSet.long_tailed``).
    Returns :class:`~adadim_dist.data.beton.BetonInfo`.
    """
    from .beton import check_beton

    path = Path(path)
    origin = None
    if rows is not None or imbalance_ratio is not None:
        origin = {"source": source, "split": split, "rows": None if rows is None else list(rows),
                  "imbalance_ratio": imbalance_ratio}
    if path.exists() and origin is not None and _split_origin(path) != origin:
        what = (f"the rows [{rows[0]}:{'' if rows[1] is None else rows[1]}] of {source}'s {split} split"
                if rows is not None else f"{source}'s {split} split long-tailed with ratio {imbalance_ratio:g}")
        raise DataError(f"{config_key}: {path} exists but is not {what} (no matching {_origin_path(path).name}); "
                        f"point {config_key} at a new file")
    if not path.exists():
        if source not in BUILTIN_SOURCES:
            rgb_flag = " --as-rgb32" if as_rgb32 else ""
            raise FileNotFoundError(
                f"{path}: no such .beton file, and source {source!r} is not written automatically; run "
                f"python -m adadim_dist.data write --source {source} --split {split} --root DIR{rgb_flag} --out {path}"
            )
        image_set = read_source(source, split, root)
        if imbalance_ratio is not None:
            image_set = image_set.long_tailed(imbalance_ratio)
        if rows is not None:
            image_set = image_set.rows(*rows)
        summary = write_beton(image_set, path, as_rgb32=as_rgb32, progress=progress)
        if origin is not None:
            record_origin(path, origin)
        logger.info("%s", summary.line())
    return check_beton(path, need_labels=need_labels)


def record_origin(path: Path, origin: dict) -> None:
    """Write ``<path>.split.json``: which source, split, rows and imbalance ratio the file holds."""
    _origin_path(Path(path)).write_text(json.dumps(origin))


def _origin_path(path: Path) -> Path:
    return path.with_name(path.name + ".split.json")


def _split_origin(path: Path) -> dict | None:
    try:
        origin = json.loads(_origin_path(path).read_text())
    except (OSError, ValueError):
        return None
    # Records written before long-tailed subsets existed have no ratio: they describe plain row ranges.
    return {"imbalance_ratio": None, **origin} if isinstance(origin, dict) else None


def prepare_datasets(data_cfg, *, progress: bool = False) -> tuple:
    """Make sure ``data_cfg.train_path`` and ``data_cfg.test_path`` exist (written from ``data_cfg.source``).

    With ``data_cfg.validation_size`` = K both come from the source's *training* split: ``train_path`` holds
    its images but the last K, ``test_path`` those last K (the validation split that model selection
    evaluates on); the source's test split is not read.

    Returns the two :class:`~adadim_dist.data.beton.BetonInfo` (train, test; test None without a labelled
    test set). Cheap when both exist.
    """
    # Without a labelled test set (data.test_path=null) the training file may be unlabelled too.
    labelled = data_cfg.test_path is not None
    held_out = getattr(data_cfg, "validation_size", None)
    if held_out is not None:
        # Negative bounds (Python slicing) name the rows without reading the source: all but the last K, the last K.
        fit_rows, val_rows = (0, -held_out), (-held_out, None)
        train = ensure_beton(data_cfg.source, "train", data_cfg.train_path, progress=progress, rows=fit_rows,
                             config_key="data.train_path")
        test = ensure_beton(data_cfg.source, "train", data_cfg.test_path, progress=progress, rows=val_rows,
                            config_key="data.test_path")
        if test.num_samples != held_out:
            raise DataError(f"data.validation_size: {data_cfg.test_path} holds {test.num_samples} held-out images, "
                            f"not {held_out}; point data.train_path and data.test_path at new files")
        return train, test
    train = ensure_beton(data_cfg.source, "train", data_cfg.train_path, need_labels=labelled, progress=progress,
                         imbalance_ratio=data_cfg.train_imbalance_ratio)
    test = ensure_beton(data_cfg.source, "test", data_cfg.test_path, progress=progress) if labelled else None
    return train, test
