"""Run a function on W real processes with a gloo process group; re-raise any rank's traceback."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn, args, error_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        fn(rank, world_size, *args)
    except BaseException:
        Path(error_dir, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int = 2, args: tuple = ()) -> None:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned processes (fn must be importable)."""
    with tempfile.TemporaryDirectory() as error_dir:
        try:
            mp.spawn(_entry, args=(world_size, free_port(), fn, args, error_dir), nprocs=world_size, join=True)
        except Exception as err:
            reports = sorted(Path(error_dir).glob("rank*.txt"))
            detail = "\n".join(f"--- {p.stem} ---\n{p.read_text()}" for p in reports)
            raise AssertionError(f"a rank failed:\n{detail or err}") from None
