"""Whole-file writes: a reader sees the old file or the new one, never a part of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def replace_atomically(target: Path, write: Callable[[str], None]) -> None:
    """``write(temporary path)`` in ``target``'s directory, then rename it onto ``target`` (atomic on one file
    system); a failed or interrupted write leaves ``target`` as it was and no temporary file behind."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
