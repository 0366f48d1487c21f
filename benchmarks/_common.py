"""Shared helpers for benchmark scripts: machine description and the JSON result line."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def emit(result: dict) -> None:
    """Print one JSON line (date, machine, command first) for BENCHMARKS.md."""
    line = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python " + " ".join(sys.argv),
        **result,
    }
    print(json.dumps(line))
