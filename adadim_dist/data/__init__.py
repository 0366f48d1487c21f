"""Data path: dataset sources → FFCV ``.beton`` files → two seeded augmented views per image.

- :mod:`.sources`  readers of the supported datasets (no downloads)
- :mod:`.writer`   the atomic ``.beton`` writer, and ``prepare_datasets`` for the training service
- :mod:`.beton`    ``check_beton``: a cheap validator, run before any Loader is built
- :mod:`.ops`      seeded, numba-compiled FFCV operations (crop, flip, colour jitter, grayscale, blur, solarize)
- :mod:`.views`    the two-view / eval / label pipelines built from ``DataConfig``
- :mod:`.loader`   ``build_ssl_loader`` / ``build_eval_loader``
- ``python -m adadim_dist.data``  the ``write`` / ``check`` / ``preview`` commands

Importing this package does not import FFCV; the functions below import it when called.
"""

from .beton import BetonInfo, check_beton
from .loader import EvalLoader, TwoViewLoader, build_eval_loader, build_ssl_loader, stage_to_cache
from .sources import BUILTIN_SOURCES, SOURCES, DataError, ImageSet, read_source
from .writer import WriteSummary, ensure_beton, prepare_datasets, write_beton

__all__ = [
    "BUILTIN_SOURCES",
    "SOURCES",
    "BetonInfo",
    "DataError",
    "EvalLoader",
    "ImageSet",
    "TwoViewLoader",
    "WriteSummary",
    "build_eval_loader",
    "build_ssl_loader",
    "check_beton",
    "ensure_beton",
    "prepare_datasets",
    "read_source",
    "stage_to_cache",
    "write_beton",
]
