"""A live progress bar in the driver (epoch, step, images/s, loss, α, ETA) while the workers train, and rank
0's story (a line per epoch, resumes, warnings) on the driver's console, which hides the workers' own output
unless ``run.verbose``.

Rank 0 posts its latest step and its lines to a ``ProgressBoard``: a few keys in the Ray cluster's own
key-value store (the GCS), under a prefix of the driver's; a thread in the driver reads them and draws. Lines
are printed as they come; on a terminal the bar redraws in place every second, elsewhere (a log file,
``ray job logs``, CI) it prints one plain line at most every ``quiet_interval_s`` seconds, so logs are not
flooded.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid

logger = logging.getLogger(__name__)

#: The GCS key-value namespace of every job's board (each board has a prefix of its own in it).
NAMESPACE = "adadim_progress"


class ProgressBoard:
    """The latest progress rank 0 posted (a dict, or None before the first step) and its lines, kept in the
    GCS's key-value store rather than in an actor: every Ray worker process wakes ~150 times a second even when
    idle (a 10 ms signal check in its main thread, and its RPC threads), and on a machine whose cores all train,
    each wake-up preempts a training thread (BENCHMARKS.md, "Service against a plain loop"). A board is a key
    prefix, so it pickles to the workers as it is, and any process of the cluster (a restarted worker group on
    another node included) reaches the same keys. Ray's ``internal_kv`` is the store Ray Tune's registry uses."""

    def __init__(self, board_id: str | None = None) -> None:
        self.prefix = f"{board_id or uuid.uuid4().hex}/"
        self._next_line = 0  # the first line number this process may take (see post_line)
        self._warned = False

    @staticmethod
    def _kv():
        from ray.experimental import internal_kv

        return internal_kv

    def claim_startup(self) -> bool:
        """True once per board (one per driver): the first worker group's start-up is the command's; a group Ray
        restarts after a failure measures only its own phases. Atomic in the GCS."""
        existed = self._kv()._internal_kv_put(self.prefix + "startup", b"claimed", overwrite=False,
                                              namespace=NAMESPACE)
        return not existed

    def post(self, progress: dict) -> None:
        try:
            self._kv()._internal_kv_put(self.prefix + "latest", json.dumps(progress), namespace=NAMESPACE)
        except Exception as err:  # noqa: BLE001 - the bar must never disturb the job
            self._warn(err)

    def post_line(self, line: str) -> None:
        """Lines are numbered in the order posted: each takes the first free number (an atomic put that does not
        overwrite), so a worker group Ray restarts goes on after its predecessor's lines."""
        kv = self._kv()
        try:
            while kv._internal_kv_put(f"{self.prefix}line/{self._next_line:08d}", line, overwrite=False,
                                      namespace=NAMESPACE):
                self._next_line += 1
            self._next_line += 1
        except Exception as err:  # noqa: BLE001 - the bar must never disturb the job
            self._warn(err)

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("[adadim] progress board unreachable (%s): the driver's bar may lag", type(err).__name__)

    def read(self) -> dict | None:
        value = self._kv()._internal_kv_get(self.prefix + "latest", namespace=NAMESPACE)
        return None if value is None else json.loads(value)

    def read_since(self, first_line: int) -> tuple[dict | None, list[str]]:
        """The latest progress and the lines from index ``first_line`` on."""
        kv = self._kv()
        keys = sorted(kv._internal_kv_list(self.prefix + "line/", namespace=NAMESPACE))[first_line:]
        lines = [kv._internal_kv_get(key, namespace=NAMESPACE) for key in keys]
        return self.read(), [line.decode() for line in lines if line is not None]

    def clear(self) -> None:
        """Delete the board's keys (the driver, once the job is over)."""
        self._kv()._internal_kv_del(self.prefix, del_by_prefix=True, namespace=NAMESPACE)


def describe(progress: dict, now: float) -> str:
    """One line: where training is and how long is left at the recent rate."""
    done, total = progress["step"], progress["total_steps"]
    rate = progress.get("steps_per_s") or 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    eta_text = "?" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(max(eta - (now - progress["time"]), 0)))
    return (f"epoch {progress['epoch']}/{progress['epochs']} step {done}/{total} "
            f"({100.0 * done / max(total, 1):.0f}%) {progress['images_per_s']:.0f} img/s "
            f"loss {progress['loss']:.3f} α {progress['alpha']:.3f} ETA {eta_text}")


class ProgressPrinter:
    """Polls a ``ProgressBoard`` from a daemon thread and draws what it holds on ``stream``."""

    def __init__(self, board, stream=None, interval_s: float = 1.0, quiet_interval_s: float = 60.0,
                 show_lines: bool = True) -> None:
        self.board = board
        self.show_lines = show_lines  # False when the workers' own output reaches the console (run.verbose)
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if self.interactive else quiet_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adadim-progress", daemon=True)
        self._last_drawn: tuple | None = None
        self._lines_shown = 0

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._draw()  # where training ended, once, even in a log whose interval had not come round
        if self.interactive and self._last_drawn is not None:
            self.stream.write("\n")
            self.stream.flush()

    def _run(self) -> None:
        last_bar = time.monotonic()
        while not self._stop.wait(min(1.0, self.interval_s)):  # lines as they come; the bar at its interval
            now = time.monotonic()
            self._draw(bar=now - last_bar >= self.interval_s)
            last_bar = now if now - last_bar >= self.interval_s else last_bar

    def _draw(self, bar: bool = True) -> None:
        try:
            progress, lines = self.board.read_since(self._lines_shown)
        except Exception:  # noqa: BLE001 - the bar must never disturb the job
            return
        for line in lines if self.show_lines else ():
            self.stream.write(f"\r\033[K[adadim] {line}\n" if self.interactive else f"[adadim] {line}\n")
        self._lines_shown += len(lines)
        lines = lines if self.show_lines else []
        if lines and self.interactive:
            self._last_drawn = None  # the bar was wiped by the line: draw it again below
        if progress is None or not bar and not (lines and self.interactive):
            self.stream.flush()
            return
        key = (progress["epoch"], progress["step"])
        if key == self._last_drawn and not self.interactive:
            return  # nothing new: no repeated line in a log
        self._last_drawn = key
        line = describe(progress, time.time())
        self.stream.write(f"\r\033[K[progress] {line}" if self.interactive else f"[progress] {line}\n")
        self.stream.flush()
