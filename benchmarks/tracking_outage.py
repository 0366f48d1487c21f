"""Step time while the tracking server is down, against a live store, side by side (issue 27, item 5).

Each "step" is a fixed piece of CPU work (matrix products, about a training step's length here) followed by
``MLflowSink.log`` of the 30 values a logging step sends. One sink writes to a live store (a SQLite file); the
other to an HTTP "server" that accepts connections and never answers (the slow kind of outage: every request
waits for its timeout, the case where MLflow's own retries took ~22 s). The sides take turns, a block of steps
each, and the ratio of their median step times is reported (1.0: the outage costs the step nothing).

    python benchmarks/tracking_outage.py [--steps 40] [--blocks 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit


def silent_server() -> tuple[socket.socket, str]:
    """A loopback port that accepts connections (the kernel's backlog) and never replies."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server, f"http://127.0.0.1:{server.getsockname()[1]}"


def step_work(size: int = 384) -> None:
    import torch

    a = torch.randn(size, size)
    for _ in range(20):
        a = torch.tanh(a @ a / size)


def timed_steps(sink, steps: int, first_step: int) -> list[float]:
    times = []
    for step in range(first_step, first_step + steps):
        started = time.perf_counter()
        step_work()
        sink.log({f"metric/{i}": float(step + i) for i in range(30)}, step=step)
        times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per side, taking turns")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from adadim_dist.training.tracking import MLflowSink

    with tempfile.TemporaryDirectory() as tmp:
        live = MLflowSink(f"sqlite:///{Path(tmp) / 'mlflow.db'}", "outage-bench", "live", Path(tmp))
        server, uri = silent_server()
        down = MLflowSink(uri, "outage-bench", "down", Path(tmp), run_id="0" * 32)  # reopening a run: no request waits
        step_work()  # warm-up, both sides alike
        times = {"live": [], "outage": []}
        for block in range(args.blocks):
            for name, sink in (("live", live), ("outage", down)):
                times[name] += timed_steps(sink, args.steps, block * args.steps)
        live.close()
        queued = len(down._pending)
        server.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["live"] / medians["outage"]
    print(f"median step: live store {medians['live'] * 1e3:.1f} ms, server not answering "
          f"{medians['outage'] * 1e3:.1f} ms, ratio {ratio:.3f}; {queued} values queued during the outage",
          file=sys.stderr)
    emit({"benchmark": "tracking_outage", "steps": args.steps * args.blocks,
          "median_step_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
          "max_step_ms": {k: round(max(v) * 1e3, 1) for k, v in times.items()},
          "throughput_ratio_outage_vs_live": round(ratio, 3), "values_queued_during_outage": queued})
    return 0


if __name__ == "__main__":
    sys.exit(main())
