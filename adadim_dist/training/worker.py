"""The Ray Train worker: ``train_loop_per_worker(config_dict)``.

Every worker re-validates the config, builds its own FFCV loader, model, engine and objective (``build.py``),
resumes from ``ray.train.get_checkpoint()`` when one exists, then for each epoch: trains, evaluates
(``OnlineEvaluation``), checkpoints and reports. What a step or an epoch produced is turned into metrics, figures
and progress by the monitors (``monitors.py``). Exceptions propagate so ``FailureConfig`` can restart workers.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from pathlib import Path

import torch

from ..config import Config, config_from_dict, storable
from ..distributed import release_lone_process_group
from ..evaluation.export import log_encoder
from ..evaluation.online import OnlineEvaluation
from .build import build_training
from .checkpoint import check_compatible, checkpoint_files, load_state, save_state
from .monitors import EpochEnd, Step, default_monitors, say
from .resume import agreed_resume_source
from .state_checks import (NonFiniteLossError, non_finite_terms, parameter_fingerprint,
                           state_is_finite_on_every_rank, step_is_finite_on_every_rank, union_over_ranks)
from .timing import StepClock
from .tracking import MetricsSink, MLflowSink, describe_layout, resolve_tracking_uri, unsent_metrics_path

logger = logging.getLogger(__name__)


def train_loop_per_worker(config_dict: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg: Config = config_from_dict(config_dict["config"])
    run_id: str | None = config_dict.get("mlflow_run_id")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if cfg.training.strategy == "ddp":  # DeepSpeed keeps its group, even of one: it initialises through it
        release_lone_process_group()
    board = config_dict.get("progress_board") if rank == 0 else None
    # The driver's stamps describe its first worker group (rank 0 logs them); a group Ray restarts after a
    # failure reports its own phases only.
    stamps = dict(config_dict["stamps"]) if board is not None and config_dict.get("stamps") \
        and claim_startup(board) else {}
    stamps["worker_started_at"] = time.time()
    device = ray.train.torch.get_device() if cfg.training.use_gpu else torch.device("cpu")
    logger.info("[adadim] worker rank %d/%d on node %s, device %s", rank, world_size,
                ray.get_runtime_context().get_node_id()[:12], device)
    torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank

    train_loader, steps_per_epoch, engine, objective = build_training(cfg, rank, world_size, device, stamps)

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
        say(rank, f"resumed from checkpoint after epoch {start_epoch} (step {objective.state.step}), "
                  f"parameter fingerprint {fingerprint}", board)

    sink: MetricsSink = MetricsSink()
    if rank == 0 and run_id is not None:
        sink = MLflowSink(
            config_dict.get("tracking_uri") or resolve_tracking_uri(cfg.tracking.uri, cfg.run.storage_path),
            cfg.tracking.experiment,
            cfg.run.name, cfg.run.storage_path, run_id=run_id, overflow_path=unsent_metrics_path(cfg),
        )
        sink.record_machine(start_epoch, layout=describe_layout(world_size, cfg.training))
    evaluation = OnlineEvaluation(cfg, rank, world_size, device, exports_encoder=run_id is not None)
    monitors = default_monitors(cfg, rank, device, sink, board, stamps)

    try:
        final_state = None
        for epoch in range(start_epoch, cfg.training.trained_epochs):
            train_loader.set_epoch(epoch)
            epoch_start = time.perf_counter()
            for monitor in monitors:
                monitor.on_epoch_start(epoch)
            is_last_epoch = epoch + 1 == cfg.training.trained_epochs
            train_metrics = train_epoch(engine, objective, train_loader, steps_per_epoch, epoch, cfg, monitors,
                                        rank, world_size, device, evaluation.is_due(epoch + 1), board)
            end = EpochEnd(epoch + 1, cfg.training.trained_epochs, time.perf_counter() - epoch_start,
                           {"epoch": epoch + 1, "resumed_from_epoch": start_epoch, **train_metrics})
            end.metrics["epoch_seconds"] = end.seconds

            # The consolidated state (every rank calls it: a collective under ZeRO-3, where each rank's module
            # holds only shards) is what is checked, evaluated and exported.
            final_state = engine.full_state_dict()
            if not state_is_finite_on_every_rank(final_state, device):
                raise NonFiniteLossError(f"non-finite parameters or BatchNorm statistics after epoch {epoch + 1}: "
                                         "checkpoint not written")
            say(rank, f"epoch {epoch + 1} parameter fingerprint {parameter_fingerprint(final_state)}")
            with tempfile.TemporaryDirectory() as directory:
                directory = Path(directory)
                engine.save(directory, rank)
                shard_files = union_over_ranks(checkpoint_files(directory), world_size)
                if evaluation.is_due(epoch + 1):
                    end.metrics.update(evaluation(final_state, is_last_epoch, end.spectra))
                if is_last_epoch:
                    sink.log(evaluation.baselines(), step=cfg.training.trained_epochs)
                for monitor in monitors:
                    monitor.on_epoch_end(end)
                if isinstance(sink, MLflowSink) and not sink.flush():
                    # MLflow down: what is buffered goes to disk with the checkpoint, so a worker killed during
                    # the outage loses no more than the epoch it was in (which it trains again).
                    sink.spill(unsent_metrics_path(cfg))
                if rank == 0:
                    save_state(directory, {
                        "epoch": epoch + 1,
                        "adadim": objective.state_dict(),
                        "loader_seed": cfg.training.seed,
                        "mlflow_run_id": sink.run_id or run_id,
                        "config": storable(cfg),
                        "files": shard_files,  # every rank's part: a checkpoint is complete with all of them
                        "metrics": {k: float(v) for k, v in end.metrics.items()},  # reported again on a re-run
                    })
                has_state = rank == 0 or cfg.training.strategy == "deepspeed"
                ray.train.report(
                    end.metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(directory) if has_state else None,
                    checkpoint_dir_name=f"epoch_{epoch + 1:04d}",
                )

        if start_epoch >= cfg.training.trained_epochs:  # a finished job run again: report where it stands
            # The metrics this checkpoint was reported with: a restored Tune trial still has its score.
            ray.train.report({**saved_metrics, "epoch": start_epoch, "resumed_from_epoch": start_epoch})
        elif evaluation.exports_encoder:
            encoder_files = evaluation.exported_encoder(final_state)
            if rank == 0:
                log_encoder(sink, encoder_files, keep_dir=unsent_metrics_path(cfg).parent)
    finally:
        train_loader.close()
        evaluation.close()
        if isinstance(sink, MLflowSink) and not sink.flush():
            sink.spill(unsent_metrics_path(cfg))


def claim_startup(board) -> bool:
    """Whether this worker group is the driver's first (``ProgressBoard.claim_startup``); False when the board
    is unreachable: progress and start-up timing are worth a warning, never a failed start."""
    try:
        return board.claim_startup()
    except Exception as err:  # noqa: BLE001
        logger.warning("[adadim] progress board unreachable (%s): no progress bar or start-up timing",
                       type(err).__name__)
        return False


def train_epoch(engine, objective, loader, num_steps, epoch, cfg: Config, monitors, rank, world_size, device,
                is_eval_epoch: bool, board=None) -> dict[str, float]:
    """One pass over the training loader; every finished step goes to the ``monitors``. Returns the last
    logging step's metrics."""
    engine.module.train()
    logged: dict[str, float] = {}
    clock = StepClock(enabled=device.type == "cpu")
    # islice: a shortened epoch (training.max_steps_per_epoch) ends at its last step, without waiting for the
    # loader to produce one more batch (~0.5 s of the tail).
    for index, (view_a, view_b, labels) in enumerate(itertools.islice(loader, num_steps)):
        clock.lap("loader_wait")
        view_a, view_b = view_a.to(device, non_blocking=True), view_b.to(device, non_blocking=True)
        is_log_step = (index + 1) % cfg.training.log_every == 0 or index + 1 == num_steps

        r_a, z_a, logits_a = engine(view_a)
        r_b, z_b, logits_b = engine(view_b)
        clock.lap("forward")
        loss, stats = objective(r_a, r_b, z_a, z_b, with_stats=is_log_step)
        # The online probe trains on detached features in the same step (no labels: no probe).
        if labels is not None:
            labels = labels.reshape(-1).long().to(device, non_blocking=True)
            probe_loss = torch.nn.functional.cross_entropy(logits_a, labels)
        else:
            # Still part of the graph (zero gradient): DDP expects a gradient for every parameter it holds.
            probe_loss = 0.0 * logits_a.sum()
        clock.lap("objective")
        engine.backward(loss + probe_loss)
        clock.lap("backward")

        # Called on every rank whatever the loss: under ZeRO 1-3 the gradient check is itself a collective.
        is_finite = step_is_finite_on_every_rank(loss, engine.gradients_finite(), device)
        clock.lap("checks")
        if not is_finite:
            bad = non_finite_terms(objective, r_a, r_b, z_a, z_b)
            message = (f"non-finite loss or gradient at epoch {epoch + 1} step {epoch * num_steps + index} "
                       f"(non-finite terms: {', '.join(bad) or 'gradients only'})")
            if cfg.training.non_finite == "stop":
                raise NonFiniteLossError(message)
            say(rank, f"warning: {message}; step skipped", board)
            engine.skip_step()
            continue
        engine.step()
        objective.step()
        clock.lap("update")
        step = Step(epoch, index, num_steps, view_a.shape[0] * world_size, is_log_step, is_eval_epoch, stats,
                    probe_loss, logits_a, labels, r_a, z_a, objective.gather, engine.lr(), clock)
        metrics: dict[str, float] = {}
        for monitor in monitors:
            monitor.on_step(step, metrics)
        clock.lap("monitors")
        if is_log_step:
            logged = metrics
    return logged
