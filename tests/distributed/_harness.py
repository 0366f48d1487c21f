"""Run a function on W real processes with a gloo process group on a free loopback port; re-raise any
rank's traceback; fail on a timeout instead of hanging. Shared by the distributed and data tests."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn, args: tuple, error_dir: str) -> None:
    import torch.distributed as dist

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


def run_ranks(fn, world_size: int, args: tuple = (), timeout: float = 300.0) -> None:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; fails on any rank error or timeout."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException  # not re-exported by torch.multiprocessing

    with tempfile.TemporaryDirectory() as error_dir:
        context = mp.spawn(_entry, args=(world_size, free_port(), fn, args, error_dir), nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    raise AssertionError(f"ranks did not finish within {timeout:.0f} s")
        except ProcessException as err:
            reports = sorted(Path(error_dir).glob("rank*.txt"))
            detail = "\n".join(f"--- {p.stem} ---\n{p.read_text()}" for p in reports)
            raise AssertionError(f"a rank failed:\n{detail or err}") from None


def run_distributed(fn, world_size: int = 2, args: tuple = ()) -> None:
    run_ranks(fn, world_size, args)
