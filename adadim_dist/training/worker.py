"""The Ray Train worker: ``train_loop_per_worker(config_dict)``.

Every worker re-validates the config, builds its own FFCV loader, model, engine and objective, resumes from
``ray.train.get_checkpoint()`` when one exists, trains, checkpoints and reports once per epoch. Every rank
evaluates its part of the kNN bank and test set; rank 0 merges, probes and writes to MLflow. Exceptions
propagate so ``FailureConfig`` can restart workers.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from ..config import Config, config_from_dict, storable
from ..distributed import (
    all_gather_rows, all_gather_with_grad, all_reduce_mean, all_reduce_with_grad, broadcast_from, broadcast_from_rank0,
    gather_to, is_distributed, object_to,
)
from ..distributed import rank as global_rank
from ..distributed.engine import build_engine, to_memory_format
from ..distributed.sync_batchnorm import convert_sync_batchnorm
from ..models import build_model
from ..objectives import adadim_from_config
from .checkpoint import check_compatible, checkpoint_files, load_state, save_state
from .driver import unsent_metrics_path
from .evaluation import (accuracy, extract, forward_batch_for, forward_in_chunks, merge_neighbours,
                         nearest_neighbours, weighted_vote_top1)
from .optim import build_optimizer, build_scheduler
from .resume import agreed_resume_source
from .timing import describe_startup, startup_phases
from .tracking import MetricsSink, MLflowSink, resolve_tracking_uri

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient went NaN/Inf; retrying from the same checkpoint would fail the same way."""


def _say(rank: int, message: str) -> None:
    # Through logging, not print: Ray Train patches print into the root logger *and* tees it to stdout,
    # which shows every line twice.
    if rank == 0:
        logger.info("[adadim] %s", message)


def train_loop_per_worker(config_dict: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from ..data import build_ssl_loader

    cfg: Config = config_from_dict(config_dict["config"])
    run_id: str | None = config_dict.get("mlflow_run_id")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # The driver's stamps describe its first worker group (rank 0 logs them); a group Ray restarts after a
    # failure reports its own phases only.
    board = config_dict.get("progress_board")
    driver_stamps = rank == 0 and board is not None and bool(config_dict.get("stamps")) \
        and claim_startup(board)
    stamps = dict(config_dict["stamps"]) if driver_stamps else {}
    stamps["worker_started_at"] = time.time()
    device = ray.train.torch.get_device() if cfg.training.use_gpu else torch.device("cpu")
    logger.info("[adadim] worker rank %d/%d on node %s, device %s", rank, world_size,
                ray.get_runtime_context().get_node_id()[:12], device)
    torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank

    train_loader = build_ssl_loader(
        cfg.data, cfg.training.batch_size_per_worker, rank, world_size, cfg.training.seed,
        distributed=world_size > 1, device=device if device.type == "cuda" else None,
    )
    steps_per_epoch = len(train_loader)
    if cfg.training.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.training.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(
            f"training.global_batch_size: {cfg.training.global_batch_size} is larger than the training set "
            f"({cfg.data.train_path}) gives {world_size} workers"
        )
    total_steps = steps_per_epoch * cfg.training.epochs
    stamps["loaders_ready_at"] = time.time()

    model = build_model(cfg.model)
    if cfg.model.sync_batchnorm and world_size > 1:
        # Same parameter objects, so the optimizer groups built below are those of the converted model.
        model = convert_sync_batchnorm(model, device.type)
    main_params, probe_params = model.parameter_groups()
    optimizer = build_optimizer(cfg.optim, cfg.training.global_batch_size, main_params, probe_params)
    scheduler = build_scheduler(
        optimizer, total_steps, int(cfg.optim.warmup_epochs * steps_per_epoch), cfg.optim.min_lr_ratio
    )
    engine = build_engine(
        cfg.training.strategy, model, optimizer, scheduler, device, ds_cfg=cfg.training.deepspeed,
        batch_size_per_worker=cfg.training.batch_size_per_worker, world_size=world_size,
        use_amp=cfg.training.mixed_precision and device.type == "cuda", channels_last=cfg.training.channels_last,
    )
    objective = build_objective(cfg, total_steps, rank)
    stamps["engine_ready_at"] = time.time()

    start_epoch = 0
    saved_metrics: dict[str, float] = {}
    # Looked up again at every (re)start: a checkpoint persisted just before a failure may not be registered
    # with Ray's controller yet, but it is complete on disk. Rank 0 decides for every rank.
    source = agreed_resume_source(ray.train.get_checkpoint(), config_dict.get("run_dir"),
                                  config_dict.get("resume_dir"), cfg.training.strategy, rank)
    if source is not None:
        with source as directory:
            state = load_state(Path(directory))
            check_compatible(state["config"], cfg)
            engine.load(Path(directory))
            objective.load_state_dict(state["adadim"])
            start_epoch = state["epoch"]
            saved_metrics = state.get("metrics", {})
            run_id = state["mlflow_run_id"] or run_id
        fingerprint = parameter_fingerprint(engine.full_state_dict())  # every rank: a collective under ZeRO-3
        _say(rank, f"resumed from checkpoint after epoch {start_epoch} (step {objective.state.step}), "
                   f"parameter fingerprint {fingerprint}")

    sink: MetricsSink = MetricsSink()
    if rank == 0 and run_id is not None:
        sink = MLflowSink(
            config_dict.get("tracking_uri") or resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path),
            cfg.tracking.experiment,
            cfg.run.name, cfg.run.storage_path, run_id=run_id, overflow_path=unsent_metrics_path(cfg),
        )
        sink.record_machine(start_epoch)

    # Without a labelled test set (data.test_path=null) evaluation is label-free: no kNN, probe or baselines.
    label_free = cfg.data.test_path is None
    with_baselines = cfg.eval.baselines and not label_free
    # Evaluation (and the baselines) run on every rank, each embedding its part of the kNN bank and of the test
    # set (eval.split_across_ranks), or on rank 0 alone.
    eval_sizes = evaluation_sizes(cfg)
    eval_parts = evaluation_parts(cfg, world_size, eval_sizes)
    shared_eval = eval_parts > 1
    eval_loaders = evaluation_loaders(cfg, rank, eval_parts, device, eval_sizes) if rank < eval_parts else None
    # The trained encoder goes to MLflow (rank 0's run). With a shared evaluation the last part's rank saves it
    # (torch.export, ~1.5 s) while rank 0 merges the neighbours, draws the spectra and logs, then hands it over.
    exports_encoder = run_id is not None
    encoder_saver = eval_parts - 1
    encoder_files: dict[str, bytes] | None = None

    try:
        metrics: dict[str, float] = {}
        final_state = None
        for epoch in range(start_epoch, cfg.training.trained_epochs):
            train_loader.set_epoch(epoch)
            epoch_start = time.perf_counter()
            is_last_epoch = epoch + 1 == cfg.training.trained_epochs
            is_eval_epoch = (epoch + 1) % cfg.eval.every_epochs == 0 or is_last_epoch
            spectra: dict = {}  # filled with the last global training batch's, then the test embeddings'
            train_metrics = train_epoch(
                engine, objective, train_loader, steps_per_epoch, epoch, cfg, sink, rank, world_size, device,
                progress_board=board if rank == 0 else None,
                batch_spectra=spectra if is_eval_epoch else None,
                stamps=stamps if epoch == start_epoch else None,
            )
            epoch_seconds = time.perf_counter() - epoch_start
            if epoch == start_epoch:
                train_metrics.update(startup_phases(stamps))

            # The consolidated state (every rank calls it: a collective under ZeRO-3, where each rank's module
            # holds only shards) is what is checked, evaluated and exported.
            final_state = engine.full_state_dict()
            if not state_is_finite_on_every_rank(final_state, device):
                raise NonFiniteLossError(f"non-finite parameters or BatchNorm statistics after epoch {epoch + 1}: "
                                         "checkpoint not written")
            _say(rank, f"epoch {epoch + 1} parameter fingerprint {parameter_fingerprint(final_state)}")
            with tempfile.TemporaryDirectory() as directory:
                directory = Path(directory)
                engine.save(directory, rank)
                shard_files = union_over_ranks(checkpoint_files(directory), world_size)
                metrics = {"epoch": epoch + 1, "epoch_seconds": epoch_seconds, "resumed_from_epoch": start_epoch,
                           **train_metrics}
                if is_eval_epoch and eval_loaders is not None:
                    eval_start = time.perf_counter()
                    # Per-worker BatchNorm statistics differ between ranks: every part is embedded by rank 0's
                    # model, the one checkpointed and exported.
                    model = evaluation_copy(rank0_state(final_state, device) if shared_eval else final_state, cfg,
                                            device)
                    if label_free:
                        metrics.update(evaluate_label_free(model, eval_loaders, cfg, device))
                    else:
                        metrics.update(evaluate(model, eval_loaders, cfg, device, spectra, shared=shared_eval))
                    if is_last_epoch and exports_encoder and encoder_saver != 0 and rank == encoder_saver:
                        encoder_files = saved_encoder(model, cfg.data.image_size)
                    if rank == 0:
                        log_spectra(sink, spectra, epoch + 1)
                        metrics["time/eval_s"] = time.perf_counter() - eval_start
                if is_last_epoch and with_baselines and eval_loaders is not None:
                    sink.log(cached_baseline_knn(eval_loaders, cfg, device, shared=shared_eval),
                             step=cfg.training.trained_epochs)
                metrics.update(sweep_metrics(metrics, cfg))
                if rank == 0:
                    epoch_metrics = {k: v for k, v in metrics.items()
                                     if k.startswith(("knn/", "probe/", "eval/", "spectrum/", "time/"))}
                    epoch_metrics["train/epoch_seconds"] = epoch_seconds
                    sink.log(epoch_metrics, step=epoch + 1)
                    _say(rank, f"epoch {epoch + 1}/{cfg.training.trained_epochs} done in {epoch_seconds:.0f}s "
                         + " ".join(f"{k}={v:.2f}" for k, v in epoch_metrics.items()
                                    if k != "train/epoch_seconds" and not k.startswith(("spectrum/dim", "time/"))))
                    if epoch == start_epoch and describe_startup(epoch_metrics):
                        _say(rank, describe_startup(epoch_metrics))
                    if isinstance(sink, MLflowSink) and not sink.flush():
                        # MLflow down: what is buffered goes to disk with the checkpoint, so a worker killed
                        # during the outage loses no more than the epoch it was in (which it trains again).
                        sink.spill(unsent_metrics_path(cfg))
                if rank == 0:
                    save_state(
                        directory,
                        {
                            "epoch": epoch + 1,
                            "adadim": objective.state_dict(),
                            "loader_seed": cfg.training.seed,
                            "mlflow_run_id": sink.run_id or run_id,
                            "config": storable(cfg),
                            "files": shard_files,  # every rank's part: a checkpoint is complete with all of them
                            "metrics": {k: float(v) for k, v in metrics.items()},  # reported again on a re-run
                        },
                    )
                has_state = rank == 0 or cfg.training.strategy == "deepspeed"
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(directory) if has_state else None,
                    checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
                )

        if start_epoch >= cfg.training.trained_epochs:  # re-run of a finished job: nothing to train, report where it stands
            # The metrics this checkpoint was reported with: a restored Tune trial still has its score.
            ray.train.report({**saved_metrics, "epoch": start_epoch, "resumed_from_epoch": start_epoch})
        elif exports_encoder:
            encoder_files = object_to(encoder_files, src=encoder_saver, dst=0)
            if rank == 0:
                if encoder_files is None:
                    encoder_files = saved_encoder(evaluation_copy(final_state, cfg, device), cfg.data.image_size)
                log_encoder(sink, encoder_files, keep_dir=unsent_metrics_path(cfg).parent)
    finally:
        train_loader.close()
        for loader in eval_loaders or ():
            loader.close()
        if isinstance(sink, MLflowSink) and not sink.flush():
            sink.spill(unsent_metrics_path(cfg))


def claim_startup(board) -> bool:
    """Whether this worker group is the driver's first (``ProgressBoard.claim_startup``); False when the board
    is unreachable: progress and start-up timing are worth a warning, never a failed start."""
    import ray

    try:
        return ray.get(board.claim_startup.remote(), timeout=30)
    except Exception as err:  # noqa: BLE001
        logger.warning("[adadim] progress board unreachable (%s): no progress bar or start-up timing",
                       type(err).__name__)
        return False


def build_objective(cfg: Config, total_steps: int, rank: int):
    """AdaDim wired to this process group's autograd-aware collectives (identity on one process)."""
    return adadim_from_config(cfg.objective, total_steps, gather=all_gather_with_grad,
                              all_reduce=all_reduce_with_grad, sync=broadcast_from_rank0, rank=rank)


def union_over_ranks(names: list[str], world_size: int) -> list[str]:
    """The sorted union of every rank's ``names`` (a collective: every rank calls it)."""
    if world_size == 1:
        return sorted(names)
    import torch.distributed as dist

    per_rank: list[list[str] | None] = [None] * world_size
    dist.all_gather_object(per_rank, names)
    return sorted(set().union(*per_rank))


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


def evaluation_copy(state: dict[str, torch.Tensor], cfg: Config, device):
    """A plain (unwrapped, unsharded, per-process BatchNorm) model holding ``state``, in eval-ready form:
    evaluation (each rank on its part) and export (rank 0) need whole modules, which the DDP/ZeRO-wrapped one
    is not under ZeRO-3."""
    model = build_model(cfg.model)
    model.load_state_dict(state)
    return to_memory_format(model.to(device), cfg.training.channels_last)


def train_epoch(engine, objective, loader, num_steps, epoch, cfg: Config, sink, rank, world_size, device,
                progress_board=None, batch_spectra: dict | None = None,
                stamps: dict | None = None) -> dict[str, float]:
    """One pass over the training loader; returns the last logged step metrics. Rank 0 posts its progress
    to the driver's ``progress_board`` (a Ray actor) at every logged step. With ``batch_spectra`` (a dict),
    the spectra of R and Z on the last step's global batch go into it (``r_batch``, ``z_batch``) and their
    collapsed dimensions into the returned metrics (``spectrum/batch_collapsed_*``). With ``stamps``, the
    time the first step finished goes into it (``first_step_done_at``)."""
    engine.module.train()
    log_every = cfg.training.log_every
    window_start, window_images = time.perf_counter(), 0
    logged: dict[str, float] = {}
    # islice: a shortened epoch (training.max_steps_per_epoch) ends at its last step, without waiting for the
    # loader to produce one more batch (~0.5 s of the tail).
    for step_in_epoch, (view_a, view_b, labels) in enumerate(itertools.islice(loader, num_steps)):
        global_step = epoch * num_steps + step_in_epoch
        view_a, view_b = view_a.to(device, non_blocking=True), view_b.to(device, non_blocking=True)
        has_labels = labels is not None
        is_log_step = (step_in_epoch + 1) % log_every == 0 or step_in_epoch + 1 == num_steps

        r_a, z_a, logits_a = engine(view_a)
        r_b, z_b, logits_b = engine(view_b)
        loss, stats = objective(r_a, r_b, z_a, z_b, with_stats=is_log_step)
        # The online probe trains on detached features in the same step (no labels: no probe).
        if has_labels:
            labels = labels.reshape(-1).long().to(device, non_blocking=True)
            probe_loss = torch.nn.functional.cross_entropy(logits_a, labels)
        else:
            # Still part of the graph (zero gradient): DDP expects a gradient for every parameter it holds.
            probe_loss = 0.0 * logits_a.sum()
        engine.backward(loss + probe_loss)

        # Called on every rank whatever the loss: under ZeRO 1-3 the gradient check is itself a collective.
        gradients_ok = engine.gradients_finite()
        # On the step's device: NCCL reduces CUDA tensors only.
        finite = torch.tensor([float(torch.isfinite(loss)) * float(gradients_ok)], device=device)
        if all_reduce_mean(finite).item() < 1.0:
            bad = [k for k, v in _scalar_stats(objective, r_a, r_b, z_a, z_b).items() if not math.isfinite(v)]
            message = (f"non-finite loss or gradient at epoch {epoch + 1} step {global_step} "
                       f"(non-finite terms: {', '.join(bad) or 'gradients only'})")
            if cfg.training.non_finite == "stop":
                raise NonFiniteLossError(message)
            _say(rank, f"warning: {message}; step skipped")
            engine.skip_step()
            continue
        engine.step()
        objective.step()
        window_images += view_a.shape[0] * world_size
        if stamps is not None and "first_step_done_at" not in stamps:
            stamps["first_step_done_at"] = time.time()
        batch_metrics = {}
        if batch_spectra is not None and step_in_epoch + 1 == num_steps:
            # Every rank gathers (a collective); the statistic is the global batch's, as the objective sees it.
            with torch.no_grad():
                batch_metrics = spectrum_metrics(objective.gather(r_a.detach()), objective.gather(z_a.detach()),
                                                 batch_spectra, suffix="_batch")

        if is_log_step:
            elapsed = time.perf_counter() - window_start
            logged = {k: all_reduce_mean(v).item() if k.startswith("loss/") and torch.is_tensor(v) else float(v)
                      for k, v in stats.items()}
            logged["train/probe_loss"] = all_reduce_mean(probe_loss.detach()).item()
            if has_labels:
                logged["train/probe_top1"] = accuracy(logits_a.detach(), labels)
            logged["train/lr"] = engine.lr()
            if device.type == "cuda":
                logged["train/gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            logged["train/images_per_s"] = window_images / max(elapsed, 1e-9)  # images (each seen as 2 views)
            logged["train/epoch"] = epoch + global_step % num_steps / num_steps
            sink.log(logged, step=global_step + 1)
            _say(rank, f"epoch {epoch + 1} step {step_in_epoch + 1}/{num_steps} loss {logged['loss/total']:.3f} "
                 f"α {logged['adadim/alpha']:.3f} erank(Z) {logged['info/erank_z']:.1f} "
                 f"{logged['train/images_per_s']:.0f} img/s")
            if progress_board is not None:
                progress_board.post.remote({
                    "epoch": epoch + 1, "epochs": cfg.training.trained_epochs, "step": global_step + 1,
                    "total_steps": num_steps * cfg.training.trained_epochs, "images_per_s": logged["train/images_per_s"],
                    "steps_per_s": window_images / max(elapsed, 1e-9) / (view_a.shape[0] * world_size),
                    "loss": logged["loss/total"], "alpha": logged["adadim/alpha"], "time": time.time(),
                })
            window_start, window_images = time.perf_counter(), 0
        logged.update(batch_metrics)  # after sink.log: logged once, with the epoch's evaluation
    return logged


def state_is_finite(state: dict[str, torch.Tensor]) -> bool:
    """Parameters *and* buffers: a diverged forward pass moves BatchNorm's running statistics too."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def state_is_finite_on_every_rank(state: dict[str, torch.Tensor], device) -> bool:
    """Whether every rank's state is finite (a collective): each rank's BatchNorm statistics are its own under
    per-worker BatchNorm, and ranks that decided alone would part ways (one saving, one stopping: a hang)."""
    finite = torch.tensor([float(state_is_finite(state))], device=device)
    return all_reduce_mean(finite).item() == 1.0


def parameter_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Sum of every floating-point entry of a state dict in float64: equal after an exact restore."""
    total = sum(v.double().sum().item() for v in state.values() if v.is_floating_point())
    return f"{total:.12e}"


def sweep_metrics(metrics: dict[str, float], cfg: Config) -> dict[str, float]:
    """Flat names a Tune scheduler can compare across trials (kNN and probe are absent between evaluations)."""
    aliases = {"rankme": metrics.get("info/erank_r")}
    aliases["knn_top1"] = metrics.get(f"knn/top1_k{cfg.eval.knn_k[0]}")
    aliases["probe_top1"] = metrics.get("probe/top1")
    return {k: v for k, v in aliases.items() if v is not None}


def _scalar_stats(objective, r_a, r_b, z_a, z_b) -> dict[str, float]:
    """Every term of the step again, to name the non-finite ones; α's state is left as the step set it."""
    saved = objective.state_dict()
    with torch.no_grad():
        _, stats = objective(r_a.detach(), r_b.detach(), z_a.detach(), z_b.detach(), with_stats=True)
    objective.load_state_dict(saved)
    return {k: float(v) for k, v in stats.items()}


def evaluation_sizes(cfg: Config) -> tuple[int, int] | None:
    """(kNN bank, test set) sizes, read from the files' headers: the bank is the first ``eval.bank_size``
    training images. None for label-free evaluation (no test set)."""
    from ..data import check_beton

    if cfg.data.test_path is None:
        return None
    train_images = check_beton(cfg.data.train_path).num_samples
    return min(train_images, cfg.eval.bank_size or train_images), check_beton(cfg.data.test_path).num_samples


def evaluation_parts(cfg: Config, world_size: int, sizes: tuple[int, int] | None) -> int:
    """Into how many parts (one per rank, from rank 0) the evaluation is split: every rank with
    ``eval.split_across_ranks`` when the bank and the test set (``sizes``) have an image for each; rank 0 alone
    otherwise, and for label-free evaluation (2,048 images)."""
    if world_size == 1 or not cfg.eval.split_across_ranks or sizes is None:
        return 1
    return world_size if min(sizes) >= world_size else 1


def part_range(count: int, part: int, parts: int) -> tuple[int, int]:
    """Contiguous [start, end) of ``count`` items for ``part`` of ``parts``; sizes differ by at most one."""
    return count * part // parts, count * (part + 1) // parts


def evaluation_loaders(cfg: Config, rank: int, parts: int, device, sizes: tuple[int, int] | None) -> tuple:
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
        for path, count in zip((cfg.data.train_path, cfg.data.test_path), sizes)
    )


def evaluate(model, eval_loaders, cfg: Config, device, spectra: dict | None = None,
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
    if shared:  # one collective: R, Z, probe logits and labels side by side (labels are exact in float32)
        widths = [test_r.shape[1], test_z.shape[1], test_logits.shape[1]]
        packed = torch.cat([test_r, test_z, test_logits, test_labels.float().unsqueeze(1)], dim=1)
        packed = all_gather_rows(packed.to(device)).cpu()
        test_r, test_z, test_logits, labels_column = packed.split([*widths, 1], dim=1)
        test_labels = labels_column.squeeze(1).long()
    extracted = time.perf_counter()
    top1 = knn_top1_across_ranks(bank, bank_labels, test_r, test_labels, tuple(cfg.eval.knn_k),
                                 cfg.eval.knn_temperature, cfg.model.num_classes, device, shared)
    if global_rank() != 0:
        return {}
    results = spectrum_metrics(test_r, test_z, spectra)
    results |= {f"knn/top1_k{k}": value for k, value in top1.items()}
    results["probe/top1"] = accuracy(test_logits, test_labels)
    results["time/eval_extract_s"] = extracted - started  # with the gathering of the test embeddings
    results["time/eval_knn_s"] = time.perf_counter() - extracted  # with the spectra's SVDs
    return results


def knn_top1_across_ranks(bank, bank_labels, queries, query_labels, ks: tuple[int, ...], temperature: float,
                          num_classes: int, device, shared: bool) -> dict[int, float] | None:
    """``knn_top1_for_each_k`` when each rank holds a part of the bank and every rank all the queries
    (``shared``; a collective): each rank's nearest neighbours are merged on rank 0, which returns the
    accuracies (None elsewhere). Unshared, this rank's bank is the whole bank."""
    largest = max(ks)
    similarities, labels = nearest_neighbours(bank.to(device), bank_labels.to(device), queries.to(device), largest)
    if shared:
        gathered_similarities = gather_to(similarities.to(device), 0)
        gathered_labels = gather_to(labels.to(device), 0)
        if gathered_similarities is None:
            return None
        similarities, labels = merge_neighbours(
            [(s.cpu(), lab.cpu()) for s, lab in zip(gathered_similarities, gathered_labels)], largest)
    return weighted_vote_top1(similarities, labels, query_labels, ks, temperature, num_classes)


def spectrum_metrics(r: torch.Tensor, z: torch.Tensor, spectra: dict | None = None,
                     suffix: str = "") -> dict[str, float]:
    """Collapsed dimensions of R and Z (``adadim_dist.objectives.spectrum``), and their spectra: held-out
    embeddings without ``suffix``, the global training batch with ``suffix="_batch"``."""
    from ..objectives.spectrum import collapsed_dimensions, singular_spectrum

    results = {}
    for name, x in (("r", r), ("z", z)):
        spectrum = singular_spectrum(x)
        if suffix:
            results[f"spectrum/batch_collapsed_{name}"] = float(collapsed_dimensions(spectrum, x.shape[1]))
        else:
            results[f"spectrum/collapsed_{name}"] = float(collapsed_dimensions(spectrum, x.shape[1]))
            results[f"spectrum/dim_{name}"] = float(x.shape[1])
        if spectra is not None:
            spectra[name + suffix] = spectrum.tolist()
    return results


def log_spectra(sink: MetricsSink, spectra: dict, epoch: int) -> None:
    """The spectra of an evaluation (test embeddings ``r``, ``z``; last global training batch ``r_batch``,
    ``z_batch``) as ``spectrum/epoch_NNNN.json`` and ``.png`` artifacts (rank 0)."""
    from ..compare import plot_spectra

    if sink.run_id is None or not spectra:
        return
    with tempfile.TemporaryDirectory() as directory:
        stem = Path(directory) / f"epoch_{epoch:04d}"
        stem.with_suffix(".json").write_text(json.dumps(spectra))
        labels = {name: f"{name[0].upper()} ({'global training batch' if name.endswith('_batch') else 'test embeddings'})"
                  for name in spectra}
        plot_spectra({labels[k]: v for k, v in spectra.items()}, stem.with_suffix(".png"),
                     f"singular values after epoch {epoch}")
        try:
            sink.log_artifacts(Path(directory), "spectrum")
        except Exception as err:  # noqa: BLE001 - MLflow down: the metrics are buffered, the figure is skipped
            logger.warning("MLflow unreachable (%s): spectrum artifacts of epoch %d not logged", type(err).__name__,
                           epoch)


#: Images of the training file (its first ones, centre view) that label-free evaluation embeds.
LABEL_FREE_IMAGES = 2048


@torch.no_grad()
def evaluate_label_free(model, eval_loaders, cfg: Config, device) -> dict[str, float]:
    """What can be measured without labels, on the first LABEL_FREE_IMAGES training images (rank 0): RankMe
    (the effective rank of R, Garrido et al. 2023), H(R) and I(R;Z) with the objective's estimator, and the
    uniformity of Z (Wang and Isola 2020; lower is more uniform)."""
    from ..objectives.information import effective_rank, information_terms, uniformity

    model.eval()
    rs, zs, seen = [], [], 0
    chunk = forward_batch_for(device)
    for images, _ in eval_loaders[0]:
        r, z, _ = forward_in_chunks(model, images.to(device, non_blocking=True), chunk)
        rs.append(r.detach().to("cpu", torch.float64, copy=True))
        zs.append(z.detach().to("cpu", torch.float64, copy=True))
        seen += images.shape[0]
        if seen >= LABEL_FREE_IMAGES:
            break
    model.train()
    r, z = torch.cat(rs)[:LABEL_FREE_IMAGES], torch.cat(zs)[:LABEL_FREE_IMAGES]
    terms = information_terms(r, z, cfg.objective.mi_order, cfg.objective.kernel, cfg.objective.kernel_sigma)
    return {"eval/rankme": float(effective_rank(r)), "eval/h_r": float(terms["h_x"]),
            "eval/mi_rz": float(terms["mi"]), "eval/uniformity": float(uniformity(z)),
            "eval/images": float(r.shape[0])}


BASELINE_KEYS = ("baseline/knn_random_top1", "baseline/knn_pixels_top1")


def baseline_cache_key(cfg: Config) -> str:
    """What the baselines depend on, and nothing else: the data files (path, size, modification time), how
    images are prepared, the bank, k and temperature, the random encoder's architecture and seed, and torch."""
    import hashlib

    files = []
    for path in (cfg.data.train_path, cfg.data.test_path):
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    # The training views and where loaders run do not change the evaluation's images.
    data = cfg.data.model_dump(mode="json", exclude={"view_a", "view_b", "num_loader_workers", "cache_dir",
                                                     "train_path", "test_path"})
    described = {
        "files": files, "data": data,
        "bank_size": cfg.eval.bank_size, "k": cfg.eval.knn_k[0], "temperature": cfg.eval.knn_temperature,
        "model": cfg.model.model_dump(mode="json"), "seed": cfg.training.seed,
        "channels_last": cfg.training.channels_last, "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


def baseline_cache_dir(cfg: Config) -> Path | None:
    from ..config import is_uri

    return None if is_uri(cfg.run.storage_path) else Path(cfg.run.storage_path) / "baseline_cache"


def baseline_cache_path(cfg: Config) -> Path | None:
    directory = baseline_cache_dir(cfg)
    return directory / f"{baseline_cache_key(cfg)}.json" if directory is not None else None


def read_cached_baselines(cfg: Config) -> dict[str, float] | None:
    path = baseline_cache_path(cfg)
    if path is None or not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: computed again and rewritten
    return cached if set(cached) == set(BASELINE_KEYS) else None


def cached_baseline_knn(eval_loaders, cfg: Config, device, shared: bool = False) -> dict[str, float]:
    """``baseline_knn``, computed once per data, bank, k and architecture: the baselines do not depend on
    training, so every later job (a re-run, each trial of a sweep) reads them back instead (seconds saved
    from the evaluation tail). Kept as JSON under ``<run.storage_path>/baseline_cache/``; rank 0's copy
    decides for every rank (``shared``: a collective). Returns the figures on rank 0, {} elsewhere."""
    is_rank0 = global_rank() == 0
    cached = read_cached_baselines(cfg) if is_rank0 else None
    if shared and broadcast_from(torch.tensor([float(cached is not None)], device=device), 0).item() == 1.0:
        return cached or {}
    if cached is not None:
        return cached
    results = baseline_knn(eval_loaders, cfg, device, shared)
    path = baseline_cache_path(cfg)
    if is_rank0 and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        partial.write_text(json.dumps(results))
        os.replace(partial, path)  # concurrent trials: whole files only
    return results


def baseline_knn(eval_loaders, cfg: Config, device, shared: bool = False) -> dict[str, float]:
    """kNN (first k) of a randomly initialised encoder of the same architecture and of raw pixels, on rank 0
    ({} elsewhere); ``shared`` as in ``evaluate``."""
    k = cfg.eval.knn_k[0]
    torch.manual_seed(cfg.training.seed + 1)  # the same random encoder on every rank
    random_model = to_memory_format(build_model(cfg.model).to(device).eval(), cfg.training.channels_last)
    bank_loader, test_loader = eval_loaders
    results = {}
    for name, forward in (("random", random_model.encoder), ("pixels", lambda x: x.flatten(1))):
        bank, bank_labels, _ = extract(forward, bank_loader, device)
        test, test_labels, _ = extract(forward, test_loader, device)
        grey = float(name == "pixels" and is_grey(bank) and is_grey(test))
        if shared:  # every rank's parts must be grey
            grey = float(all_reduce_mean(torch.tensor([grey], device=device)).item() == 1.0)
        if grey:
            # Grey images stored as RGB (Fashion-MNIST): the cosine over one channel is the same, at a third
            # of the cost of this, the evaluation's largest product.
            bank, test = first_channel(bank), first_channel(test)
        if shared:
            packed = all_gather_rows(torch.cat([test, test_labels.float().unsqueeze(1)], dim=1).to(device)).cpu()
            test, test_labels = packed[:, :-1], packed[:, -1].long()
        top1 = knn_top1_across_ranks(bank, bank_labels, test, test_labels, (k,), cfg.eval.knn_temperature,
                                     cfg.model.num_classes, device, shared)
        if global_rank() == 0:
            results[f"baseline/knn_{name}_top1"] = top1[k]
    return results


def is_grey(flat_rgb: torch.Tensor) -> bool:
    """Whether every flattened 3-channel image has three equal channels."""
    channels = flat_rgb.view(flat_rgb.shape[0], 3, -1)
    return torch.equal(channels[:, 0], channels[:, 1]) and torch.equal(channels[:, 0], channels[:, 2])


def first_channel(flat_rgb: torch.Tensor) -> torch.Tensor:
    return flat_rgb.view(flat_rgb.shape[0], 3, -1)[:, 0]


def saved_encoder(model, image_size: int) -> dict[str, bytes]:
    """The trained encoder saved as an MLflow PyTorch model in the ``pt2`` (torch.export) format, which loads
    without unpickling code: its files' contents by relative path (small enough to hand to another rank)."""
    import copy

    import mlflow.pytorch
    import numpy as np

    encoder = copy.deepcopy(model.encoder).float().cpu().eval()  # a plain copy (evaluation_copy), never ZeRO shards
    example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "encoder"
        mlflow.pytorch.save_model(encoder, str(target), input_example=example,
                                  pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        return {str(path.relative_to(target)): path.read_bytes() for path in sorted(target.rglob("*"))
                if path.is_file()}


def log_encoder(sink: MetricsSink, files: dict[str, bytes], keep_dir: Path | None = None) -> None:
    """The trained encoder's files (``saved_encoder``) as the run's ``encoder`` artifact; into ``keep_dir`` when
    MLflow is down."""
    if sink.run_id is None:
        return
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "encoder"
        for name, content in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(content)
        try:
            sink.log_artifacts(target, "encoder")
        except Exception as err:  # noqa: BLE001 - MLflow down at the end must not fail a trained job
            if keep_dir is None:
                raise
            import shutil

            shutil.rmtree(keep_dir / "encoder", ignore_errors=True)
            shutil.copytree(target, keep_dir / "encoder")
            logger.warning("MLflow unreachable (%s): the encoder is saved in %s instead; log it later with "
                           "mlflow artifacts log-artifacts --local-dir %s --run-id %s --artifact-path encoder",
                           type(err).__name__, keep_dir / "encoder", keep_dir / "encoder", sink.run_id)
