"""Monitors: small pieces that read what a training step or an epoch produced (the objective's stats dict, the
evaluation's outputs, clocks) and turn it into metrics, figures and progress lines. Each decides for itself when
it runs; the loop calls every monitor of ``default_monitors`` at every step and at every epoch's end, on every
rank (some of them hold collectives), so a new statistic is one class here and one line in that list.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from ..distributed import all_reduce_mean
from ..evaluation.features import accuracy
from ..evaluation.spectra import log_spectra, spectrum_metrics
from .timing import StepClock, describe_startup, startup_phases

logger = logging.getLogger(__name__)


def say(rank: int, message: str, board=None) -> None:
    """A line of the job's story, from rank 0. Through logging, not print: Ray Train patches print into the
    root logger *and* tees it to stdout, which shows every line twice. With ``board`` (the driver's progress
    board) the line is also shown on the driver's console, which hides the workers' output by default."""
    if rank != 0:
        return
    logger.info("[adadim] %s", message)
    if board is not None:
        board.post_line(message)


@dataclass
class Step:
    """One finished optimizer step as monitors see it (every rank)."""

    epoch: int  # 0-based
    index: int  # 0-based within the epoch
    num_steps: int  # per epoch
    images: int  # images of the global batch (each seen as two views)
    is_log_step: bool
    is_eval_epoch: bool
    stats: dict  # the objective's
    probe_loss: torch.Tensor
    probe_logits: torch.Tensor
    labels: torch.Tensor | None
    r: torch.Tensor  # this rank's embeddings of the first view
    z: torch.Tensor
    gather: object  # the objective's autograd-free gather (a collective)
    lr: float
    clock: StepClock  # the phases of the steps so far in this logging window

    @property
    def global_step(self) -> int:
        return self.epoch * self.num_steps + self.index

    @property
    def is_last(self) -> bool:
        return self.index + 1 == self.num_steps


@dataclass
class EpochEnd:
    """An epoch after its evaluation: ``metrics`` is what Ray Train gets reported (monitors may add to it)."""

    epoch: int  # 1-based: the number of epochs trained
    epochs: int
    seconds: float
    metrics: dict
    spectra: dict = field(default_factory=dict)  # the evaluation's and the last training batch's


class Monitor:
    """Reads a ``Step`` or an ``EpochEnd``; ``on_step`` adds to the metrics a logging step sends."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, end: EpochEnd) -> None:
        pass


class ObjectiveStats(Monitor):
    """The objective's terms (losses averaged over ranks), the online probe's loss and accuracy, the learning
    rate and, on a GPU, its peak memory."""

    def __init__(self, device) -> None:
        self.device = device

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        if not step.is_log_step:
            return
        metrics.update({k: all_reduce_mean(v).item() if k.startswith("loss/") and torch.is_tensor(v) else float(v)
                        for k, v in step.stats.items()})
        metrics["train/probe_loss"] = all_reduce_mean(step.probe_loss.detach()).item()
        if step.labels is not None:
            metrics["train/probe_top1"] = accuracy(step.probe_logits.detach(), step.labels)
        metrics["train/lr"] = step.lr
        if self.device.type == "cuda":
            metrics["train/gpu_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30


class Throughput(Monitor):
    """Images per second over the steps since the last logging step, where its time went (``time/step_*_ms``,
    on a CPU), and where in the epoch training is."""

    def __init__(self) -> None:
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        self.window_start, self.window_images = time.perf_counter(), 0

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        self.window_images += step.images
        if not step.is_log_step:
            return
        metrics["train/images_per_s"] = self.window_images / max(time.perf_counter() - self.window_start, 1e-9)
        metrics["train/epoch"] = step.epoch + step.index / step.num_steps
        metrics.update(step.clock.window_ms())
        self.window_start, self.window_images = time.perf_counter(), 0


class BatchSpectrum(Monitor):
    """After the last step of an evaluated epoch: the spectra of R and Z on the global training batch, as the
    objective sees it (every rank gathers: a collective), and their collapsed dimensions."""

    def __init__(self) -> None:
        self.spectra: dict = {}
        self.metrics: dict[str, float] = {}

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        if step.is_eval_epoch and step.is_last:
            with torch.no_grad():
                self.metrics = spectrum_metrics(step.gather(step.r.detach()), step.gather(step.z.detach()),
                                                self.spectra, suffix="_batch")

    def on_epoch_end(self, end: EpochEnd) -> None:
        end.metrics.update(self.metrics)
        end.spectra.update(self.spectra)
        self.spectra, self.metrics = {}, {}


class StartupTiming(Monitor):
    """The start-up phases (``timing.startup_phases``) of the first epoch this worker group trains."""

    def __init__(self, stamps: dict) -> None:
        self.stamps: dict | None = stamps

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        if self.stamps is not None:
            self.stamps.setdefault("first_step_done_at", time.time())

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.stamps is not None:
            end.metrics.update(startup_phases(self.stamps))
            self.stamps = None


class SweepAliases(Monitor):
    """Flat names a Tune scheduler can compare across trials (kNN and probe are absent between evaluations)."""

    def __init__(self, first_k: int) -> None:
        self.first_k = first_k

    def on_epoch_end(self, end: EpochEnd) -> None:
        aliases = {"rankme": end.metrics.get("info/erank_r"), "knn_top1": end.metrics.get(f"knn/top1_k{self.first_k}"),
                   "probe_top1": end.metrics.get("probe/top1")}
        end.metrics.update({k: v for k, v in aliases.items() if v is not None})


#: The metrics of an epoch that are logged once per epoch (the step metrics are logged as they come).
EPOCH_PREFIXES = ("knn/", "knn_class/", "probe/", "eval/", "spectrum/", "time/")


def epoch_metrics(end: EpochEnd) -> dict[str, float]:
    metrics = {k: v for k, v in end.metrics.items() if k.startswith(EPOCH_PREFIXES)}
    return metrics | {"train/epoch_seconds": end.seconds}


class TrackingLog(Monitor):
    """Rank 0 sends each logging step's metrics, and each epoch's evaluation and spectra figures, to MLflow."""

    def __init__(self, sink, rank: int) -> None:
        self.sink, self.rank = sink, rank

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        if step.is_log_step and self.rank == 0:
            self.sink.log(metrics, step=step.global_step + 1)

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.rank == 0:
            log_spectra(self.sink, end.spectra, end.epoch)
            self.sink.log(epoch_metrics(end), step=end.epoch)


class ProgressReport(Monitor):
    """Rank 0's progress: a line per logging step in the worker's log and the latest step on the driver's
    progress board (its bar), and a line per epoch (with the start-up's story after the first) on both."""

    def __init__(self, rank: int, board, total_epochs: int) -> None:
        self.rank, self.board, self.total_epochs = rank, board, total_epochs

    def on_step(self, step: Step, metrics: dict[str, float]) -> None:
        if not step.is_log_step or self.rank != 0:
            return
        say(self.rank, f"epoch {step.epoch + 1} step {step.index + 1}/{step.num_steps} loss "
                       f"{metrics['loss/total']:.3f} α {metrics['adadim/alpha']:.3f} erank(Z) "
                       f"{metrics['info/erank_z']:.1f} {metrics['train/images_per_s']:.0f} img/s")
        if self.board is not None:
            self.board.post({
                "epoch": step.epoch + 1, "epochs": self.total_epochs, "step": step.global_step + 1,
                "total_steps": step.num_steps * self.total_epochs, "images_per_s": metrics["train/images_per_s"],
                "steps_per_s": metrics["train/images_per_s"] / step.images,
                "loss": metrics["loss/total"], "alpha": metrics["adadim/alpha"], "time": time.time(),
            })

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.rank != 0:
            return
        shown = epoch_metrics(end)
        figures = [f"{k}={v:.2f}" for k, v in shown.items()
                   if k != "train/epoch_seconds" and not k.startswith(("spectrum/dim", "time/", "knn_class/"))]
        say(self.rank, " ".join([f"epoch {end.epoch}/{end.epochs} done in {end.seconds:.0f}s", *figures]), self.board)
        startup = describe_startup(shown)
        if startup and "time/to_first_step_s" in shown:
            say(self.rank, startup, self.board)


def default_monitors(cfg, rank: int, device, sink, board, stamps: dict | None) -> list[Monitor]:
    """The monitors of a training worker, in the order they run (later ones read what earlier ones added)."""
    return [
        ObjectiveStats(device),
        Throughput(),
        BatchSpectrum(),
        StartupTiming(stamps),
        SweepAliases(cfg.eval.knn_k[0]),
        TrackingLog(sink, rank),
        ProgressReport(rank, board, cfg.training.trained_epochs),
    ]
