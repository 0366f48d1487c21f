"""Import FFCV without the numba compile its import does in every process.

``ffcv/fields/rgb_image.py`` (FFCV 1.0.2) builds ``IMAGE_MODES = numba.typed.Dict()`` at import. The first
typed-dict insert compiles numba's dictionary implementation, which numba does not cache on disk: 7 s of
a 10 s ``import ffcv`` here, paid again by the driver, every Ray worker and every test process. FFCV only reads
``IMAGE_MODES`` from Python (to pick a constant when it generates pipeline code, and in the writer), never from
compiled code, so a plain ``dict`` behaves identically; the import below gets one. Modules of this package
import this module before anything from ``ffcv``.
"""

from __future__ import annotations

import sys


def _import_ffcv() -> None:
    if "ffcv" in sys.modules:
        return
    import numba.typed

    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict  # what `from numba.typed import Dict` in rgb_image.py picks up
    try:
        import ffcv  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


_import_ffcv()
