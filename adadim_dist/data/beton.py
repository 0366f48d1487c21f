"""A cheap validator for FFCV ``.beton`` files: header, field table, metadata and allocation table.

FFCV's own ``Reader`` trusts the file: a missing file, an empty one or a truncated one surfaces as an
``IndexError`` or ``AssertionError`` deep inside, or only later as garbage images or a crash in compiled
code. :func:`check_beton` reads the same structures (a few MB for 60k images, no Loader, no JIT) and
raises ``FileNotFoundError`` or :class:`DataError` (a ``ValueError``) naming the path and the problem,
before any expensive set-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .sources import DataError

#: FFCV field type ids (``ffcv.types.TYPE_ID_HANDLER``) that this project reads.
_RGB_IMAGE_TYPE_ID = 2
_INT_TYPE_ID = 1


@dataclass(frozen=True)
class BetonInfo:
    """What a checked ``.beton`` holds."""

    path: Path
    num_samples: int
    fields: dict[str, str]  # field name → FFCV field class name, in file order
    min_size: tuple[int, int]  # smallest (height, width)
    max_size: tuple[int, int]
    num_classes: int | None  # max label + 1; None without a label field
    # Per sample, as checked: the image records (mode, width, height, data_ptr) and the labels (None without).
    images: np.ndarray = field(repr=False, compare=False)
    labels: np.ndarray | None = field(repr=False, compare=False)

    @property
    def has_labels(self) -> bool:
        return self.num_classes is not None


def check_beton(path: str | Path, need_labels: bool = True) -> BetonInfo:
    """Validate ``path`` as a non-empty FFCV ``.beton`` with an ``image`` field (and ``label`` if needed)."""
    from . import _ffcv  # noqa: F401  (before any ffcv import)
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, TYPE_ID_HANDLER
    from ffcv.types import get_handlers, get_metadata_type
    from ffcv.utils import decode_null_terminated_string

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .beton file")
    size = path.stat().st_size

    def corrupt(reason: str) -> DataError:
        return DataError(f"{path}: not a valid FFCV .beton file ({reason}); rewrite it with "
                          "python -m adadim_dist.data write ... --overwrite")  # fmt: skip

    if size < HeaderType.itemsize:
        raise corrupt(f"{size} bytes, shorter than the {HeaderType.itemsize}-byte header")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        raise corrupt(f"format version {int(header['version'])}, expected {CURRENT_VERSION}")
    num_fields, num_samples = int(header["num_fields"]), int(header["num_samples"])
    alloc_table_ptr = int(header["alloc_table_ptr"])
    fields_end = HeaderType.itemsize + num_fields * FieldDescType.itemsize
    if num_fields == 0 or fields_end > size:
        raise corrupt(f"field table of {num_fields} fields does not fit in {size} bytes")
    descriptors = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    type_ids = [int(t) for t in descriptors["type_id"]]
    if any(TYPE_ID_HANDLER.get(t) is None for t in type_ids):
        raise corrupt(f"unknown field type ids {type_ids}")
    try:
        names = [decode_null_terminated_string(n) for n in descriptors["name"]]
    except UnicodeDecodeError:
        raise corrupt("field names are not ASCII") from None
    fields = {name: TYPE_ID_HANDLER[t].__name__ for name, t in zip(names, type_ids)}
    if num_samples == 0:
        raise DataError(f"{path}: the .beton file holds no samples")

    metadata_type = get_metadata_type(get_handlers(descriptors))
    metadata_end = fields_end + num_samples * metadata_type.itemsize
    if not metadata_end <= alloc_table_ptr <= size:
        raise corrupt(f"truncated: {size} bytes, but the sample table ends at byte {metadata_end} and the "
                      f"allocation table starts at byte {alloc_table_ptr}")  # fmt: skip
    table_bytes = size - alloc_table_ptr
    if table_bytes % ALLOC_TABLE_TYPE.itemsize:
        raise corrupt(f"truncated allocation table ({table_bytes} bytes)")
    alloc_table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=alloc_table_ptr)
    if len(alloc_table) and (
        int((alloc_table["ptr"] + alloc_table["size"]).max()) > alloc_table_ptr
        or int(alloc_table["ptr"].min()) < metadata_end
        or int(alloc_table["sample_id"].max()) >= num_samples
    ):
        raise corrupt("allocation table points outside the data region")
    metadata = np.fromfile(path, dtype=metadata_type, count=num_samples, offset=fields_end)

    if "image" not in fields or type_ids[names.index("image")] != _RGB_IMAGE_TYPE_ID:
        raise DataError(f"{path}: no RGBImageField named 'image' (fields: {fields})")
    images = metadata[f"f{names.index('image')}"]
    heights, widths = images["height"].astype(np.int64), images["width"].astype(np.int64)
    if heights.min() < 1 or widths.min() < 1 or not np.isin(images["mode"], (0, 1)).all():
        raise corrupt("image records with zero size or an unknown storage mode")
    if not np.isin(images["data_ptr"], alloc_table["ptr"]).all():
        raise corrupt("image records point to data the allocation table does not hold")

    num_classes, labels = None, None
    if "label" in fields:
        if type_ids[names.index("label")] != _INT_TYPE_ID:
            raise DataError(f"{path}: field 'label' is a {fields['label']}, expected an IntField")
        labels = metadata[f"f{names.index('label')}"]
        if labels.min() < 0:
            raise DataError(f"{path}: negative labels (min {int(labels.min())})")
        num_classes = int(labels.max()) + 1
    elif need_labels:
        raise DataError(f"{path}: no 'label' field (fields: {', '.join(fields)}); write it from a labelled source")

    return BetonInfo(
        path=path,
        num_samples=num_samples,
        fields=fields,
        min_size=(int(heights.min()), int(widths.min())),
        max_size=(int(heights.max()), int(widths.max())),
        num_classes=num_classes,
        images=images,
        labels=labels,
    )
