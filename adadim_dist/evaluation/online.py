"""Evaluation during training, on every rank or on rank 0: kNN and the online probe on a labelled test set
(each rank embedding its part of the bank and of the test set), or label-free statistics without one; the
spectra of the test embeddings; the baselines after the last epoch; the encoder export.

``OnlineEvaluation`` is what the worker loop calls; the functions below it are shared with the offline
``python -m adadim_dist.evaluate`` (features, kNN, label-free) or tested on their own.
"""

from __future__ import annotations

import time

import torch

from ..distributed import broadcast_from, is_distributed, object_to
from ..distributed import rank as global_rank
from ..distributed.engine import to_memory_format
from ..models import build_model
from .baselines import cached_baseline_knn
from .export import saved_encoder
from .features import accuracy, extract
from .knn import gather_rows_with_labels, knn_top1_across_ranks
from .label_free import evaluate_label_free
from .spectra import spectrum_metrics


class OnlineEvaluation:
    """The evaluation of one worker (every rank builds one and calls it at the same epochs: a collective).

    With ``eval.split_across_ranks`` every rank embeds its part of the kNN bank and of the test set; otherwise
    rank 0 alone evaluates. The trained encoder goes to MLflow with rank 0's run: with a shared evaluation
    the last part's rank saves it (torch.export, ~1.5 s) while rank 0 merges neighbours and logs."""

    def __init__(self, cfg, rank: int, world_size: int, device, exports_encoder: bool) -> None:
        self.cfg, self.rank, self.device = cfg, rank, device
        self.label_free = cfg.data.test_path is None  # no labelled test set: no kNN, probe or baselines
        sizes = evaluation_sizes(cfg)
        self.parts = evaluation_parts(cfg, world_size, sizes)
        self.shared = self.parts > 1
        self.loaders = evaluation_loaders(cfg, rank, self.parts, device, sizes) if rank < self.parts else None
        self.exports_encoder = exports_encoder
        self.encoder_saver = self.parts - 1
        self.encoder_files: dict[str, bytes] | None = None

    def is_due(self, epoch: int) -> bool:
        """After epoch ``epoch`` (1-based): every ``eval.every_epochs``, and after the last trained epoch."""
        return epoch % self.cfg.eval.every_epochs == 0 or epoch == self.cfg.training.trained_epochs

    def __call__(self, state: dict[str, torch.Tensor], is_last_epoch: bool, spectra: dict) -> dict[str, float]:
        """Metrics of the model holding ``state`` (the consolidated state every rank has) on rank 0, {}
        elsewhere; the test embeddings' spectra go into ``spectra``."""
        if self.loaders is None:
            return {}
        started = time.perf_counter()
        # Per-worker BatchNorm statistics differ between ranks: every part is embedded by rank 0's model, the
        # one checkpointed and exported.
        model = evaluation_copy(rank0_state(state, self.device) if self.shared else state, self.cfg, self.device)
        if self.label_free:
            metrics = evaluate_label_free(model, self.loaders[0], self.cfg.objective, self.device)
        else:
            metrics = evaluate_labelled(model, self.loaders, self.cfg, self.device, spectra, shared=self.shared)
        if is_last_epoch and self.exports_encoder and self.encoder_saver != 0 and self.rank == self.encoder_saver:
            self.encoder_files = saved_encoder(model, self.cfg.data.image_size)
        if self.rank == 0:
            metrics["time/eval_s"] = time.perf_counter() - started
        return metrics

    def baselines(self) -> dict[str, float]:
        """The random-encoder and raw-pixel kNN (cached; rank 0's figures, {} elsewhere or without labels)."""
        if self.label_free or not self.cfg.eval.baselines or self.loaders is None:
            return {}
        return cached_baseline_knn(self.loaders, self.cfg, self.device, shared=self.shared)

    def exported_encoder(self, final_state: dict[str, torch.Tensor]) -> dict[str, bytes] | None:
        """The saved encoder's files on rank 0 (a collective: the saver rank hands them over), None elsewhere."""
        files = object_to(self.encoder_files, src=self.encoder_saver, dst=0)
        if self.rank != 0:
            return None
        return files or saved_encoder(evaluation_copy(final_state, self.cfg, self.device), self.cfg.data.image_size)

    def close(self) -> None:
        for loader in self.loaders or ():
            loader.close()


def evaluate_labelled(model, eval_loaders, cfg, device, spectra: dict | None = None,
                      shared: bool = False) -> dict[str, float]:
    """kNN top-1 for each k and online-probe top-1 on the test split; the spectra of the test embeddings R and Z
    and their collapsed dimensions too (filled into ``spectra`` when given). Returns the metrics on rank 0.

    ``shared``: every rank calls this with its part of the bank and of the test set (``evaluation_loaders``).
    The test set's embeddings are gathered on every rank, each rank finds every test image's nearest
    neighbours in its part of the bank, and rank 0 merges them: each rank embeds 1/W of the images and does
    1/W of the similarity product. Other ranks return {}."""
    model.eval()
    started = time.perf_counter()
    bank_loader, test_loader = eval_loaders
    test_r, test_labels, test_logits = extract(model, test_loader, device)
    bank, bank_labels, _ = extract(model.encoder, bank_loader, device)  # R alone: the bank needs no Z, no logits
    dtype = next(model.projector.parameters()).dtype
    with torch.no_grad():
        test_z = torch.cat([model.projector(chunk.to(device, dtype)).float().cpu() for chunk in test_r.split(2048)])
    model.train()
    if shared:  # one collective: R, Z, probe logits and labels side by side
        (test_r, test_z, test_logits), test_labels = gather_rows_with_labels([test_r, test_z, test_logits],
                                                                             test_labels, device)
    extracted = time.perf_counter()
    top1, class_top1 = knn_top1_across_ranks(bank, bank_labels, test_r, test_labels, tuple(cfg.eval.knn_k),
                                             cfg.eval.knn_temperature, cfg.model.num_classes, device, shared,
                                             per_class=cfg.eval.per_class)
    if global_rank() != 0:
        return {}
    results = spectrum_metrics(test_r, test_z, spectra)
    results |= {f"knn/top1_k{k}": value for k, value in top1.items()}
    if cfg.eval.per_class:
        results |= {f"knn_class/top1_k{cfg.eval.knn_k[0]}_c{c}": value for c, value in class_top1.items()}
    results["probe/top1"] = accuracy(test_logits, test_labels)
    results["time/eval_extract_s"] = extracted - started  # with the gathering of the test embeddings
    results["time/eval_knn_s"] = time.perf_counter() - extracted  # with the spectra's SVDs
    return results


def rank0_state(state: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Rank 0's floating-point entries of ``state`` on every rank (a collective; one broadcast per dtype)."""
    if not is_distributed():
        return state
    state = dict(state)
    for dtype in sorted({v.dtype for v in state.values() if v.is_floating_point()}, key=str):
        keys = [key for key, value in state.items() if value.dtype == dtype]
        flat = broadcast_from(torch.cat([state[key].reshape(-1) for key in keys]).to(device), 0).cpu()
        for key, piece in zip(keys, flat.split([state[key].numel() for key in keys])):
            state[key] = piece.view_as(state[key])
    return state


def evaluation_copy(state: dict[str, torch.Tensor], cfg, device):
    """A plain (unwrapped, unsharded, per-process BatchNorm) model holding ``state``, in eval-ready form:
    evaluation (each rank on its part) and export (rank 0) need whole modules, which the DDP/ZeRO-wrapped one
    is not under ZeRO-3."""
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return to_memory_format(model.to(device), cfg.training.channels_last)


def bank_file(cfg):
    """The kNN bank's file: ``eval.bank_path``, or the training file."""
    return cfg.eval.bank_path or cfg.data.train_path


def evaluation_sizes(cfg) -> tuple[int, int] | None:
    """(kNN bank, test set) sizes, read from the files' headers: the bank is the first ``eval.bank_size``
    images of its file (``bank_file``). None for label-free evaluation (no test set)."""
    from ..data import check_beton

    if cfg.data.test_path is None:
        return None
    bank_images = check_beton(bank_file(cfg)).num_samples
    return min(bank_images, cfg.eval.bank_size or bank_images), check_beton(cfg.data.test_path).num_samples


def evaluation_parts(cfg, world_size: int, sizes: tuple[int, int] | None) -> int:
    """Into how many parts (one per rank, from rank 0) the evaluation is split: every rank with
    ``eval.split_across_ranks`` when the bank and the test set (``sizes``) have an image for each; rank 0 alone
    otherwise, and for label-free evaluation (2,048 images)."""
    if world_size == 1 or not cfg.eval.split_across_ranks or sizes is None:
        return 1
    return world_size if min(sizes) >= world_size else 1


def part_range(count: int, part: int, parts: int) -> tuple[int, int]:
    """Contiguous [start, end) of ``count`` items for ``part`` of ``parts``; sizes differ by at most one."""
    return count * part // parts, count * (part + 1) // parts


def evaluation_loaders(cfg, rank: int, parts: int, device, sizes: tuple[int, int] | None) -> tuple:
    """This rank's evaluation loaders: its part of the kNN bank and of the test set (all of both when
    ``parts`` is 1; ``sizes`` from ``evaluation_sizes``); label-free evaluation reads the training file alone."""
    import numpy as np

    from ..data import build_eval_loader

    on_device = device if device.type == "cuda" else None
    if sizes is None:
        return (build_eval_loader(cfg.data, cfg.data.train_path, 512, rank=0, world_size=1, distributed=False,
                                  device=on_device, labels=False),)
    return tuple(
        build_eval_loader(cfg.data, path, 512, rank=0, world_size=1, distributed=False, device=on_device,
                          indices=np.arange(*part_range(count, rank, parts), dtype=np.int64))
        for path, count in zip((bank_file(cfg), cfg.data.test_path), sizes)
    )
