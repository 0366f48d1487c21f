"""DeepSpeed ZeRO 0, 1, 2 and 3 end to end on the real stack (2 Ray workers, gloo, FFCV, MLflow): train two
epochs, evaluate (kNN, probe), export the encoder to MLflow, checkpoint, resume from the checkpoint, final JSON
line. Under ZeRO-3 the encoder that is evaluated and exported holds the full consolidated weights: equal to
ZeRO-0's after the same steps from the same seed. ZeRO-2's re-run goes through `ray job submit` with token
authentication (test_job_submit.py has the rest) after its newest checkpoint lost one rank's shard: it passes
that checkpoint over, resumes from the one before and trains the last epoch again."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import REPO, run_cli
from .test_job_submit import submit
from .test_run import STEP_METRICS, final_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = (0, 1, 2, 3)
# Stage 1 writes its optimizer shards in the same format, by the same DeepSpeed code, as stage 2, whose resume
# (from its previous checkpoint, the newest missing a shard) is checked: one job saved.
RESUMED_STAGES = (0, 2, 3)
#: The stage whose re-run finds its newest checkpoint without rank 1's optimizer shard.
BROKEN_SHARD_STAGE = 2
#: Stages run in these lanes, the lanes at the same time: 3 and 4 jobs.
LANES = ((2, 1), (3, 0))
# Flip and crop only: the other augmentations add FFCV compile time per worker and are tested elsewhere.
LIGHT_VIEWS = [f"data.{view}.{key}=0" for view in ("view_a", "view_b")
               for key in ("jitter_prob", "grayscale_prob", "solarize_prob")]


def stage_args(betons, storage, stage, *extra):
    return [
        "--config", f"configs/deepspeed/zero{max(stage, 1)}_fmnist.yaml", f"training.deepspeed.zero_stage={stage}",
        f"data.train_path={betons['train']}", f"data.test_path={betons['test']}",
        f"run.storage_path={storage}", f"run.name=zero{stage}", "training.epochs=2",
        "training.global_batch_size=64", "training.max_steps_per_epoch=2", "training.log_every=1",
        "training.cpus_per_worker=0.5", "eval.every_epochs=2", "eval.knn_k=[20]", *LIGHT_VIEWS,
        "run.verbose=true",  # the tests read the workers' parameter fingerprints
        *extra,
    ]


def fingerprints(log: str) -> dict[str, str]:
    """What the workers logged: the parameter fingerprint after each epoch and after a resume."""
    found = {f"epoch {m[0]}": m[1] for m in re.findall(r"epoch (\d+) parameter fingerprint (\S+)", log)}
    found.update({f"resumed {m[0]}": m[1]
                  for m in re.findall(r"resumed from checkpoint after epoch (\d+) .*?parameter fingerprint (\S+)", log)})
    return found


def exported_encoder(summary) -> dict[str, torch.Tensor]:
    """The encoder's weights as logged to MLflow (the pt2 export, loaded back without unpickling code)."""
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=summary["run_id"], artifact_path="encoder",
                              tracking_uri=summary["tracking_uri"])
    return dict(torch.export.load(str(Path(path) / "data" / "model.pt2")).state_dict)


@pytest.fixture(scope="module")
def stage_jobs(tiny_betons, tmp_path_factory, ray_cluster):
    """Each stage: a 2-epoch job, then (RESUMED_STAGES) the same command again: the job is finished, so it resumes
    from the last checkpoint, loads every rank's shard, and reports. For BROKEN_SHARD_STAGE, rank 1's optimizer
    shard of the newest checkpoint is deleted first: the re-run resumes from epoch 1 and trains epoch 2 again.

    The stages run in two lanes at once (each job takes 1 of the cluster's 2 CPUs): a job's start-up leaves part
    of the machine idle, waiting on Ray's processes and calls. Each lane has its own storage, so its own SQLite
    store."""
    from concurrent.futures import ThreadPoolExecutor

    def run_stages(stages, storage):
        return {stage: run_stage(stage, storage) for stage in stages}

    def run_stage(stage, storage):
        args = stage_args(tiny_betons, storage, stage)
        first = run_cli(args, cwd=REPO, env=ray_cluster["env"])
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        again = None
        if stage == BROKEN_SHARD_STAGE:
            newest = Path(final_json(first.stdout)["checkpoint"])
            (newest / "deepspeed" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
            again = submit(ray_cluster["dashboard"], [sys.executable, "-m", "adadim_dist.run", *args], token=True)
            assert "succeeded" in again.stdout + again.stderr, again.stdout[-3000:] + again.stderr[-3000:]
        elif stage in RESUMED_STAGES:
            again = run_cli(args, cwd=REPO, env=ray_cluster["env"])
        assert again is None or again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        return {"first": first, "again": again, "summary": final_json(first.stdout),
                "run_dir": storage / f"zero{stage}", "args": args}

    with ThreadPoolExecutor(max_workers=len(LANES)) as pool:
        lanes = [pool.submit(run_stages, stages, tmp_path_factory.mktemp("zero")) for stages in LANES]
        return {stage: job for lane in lanes for stage, job in lane.result().items()}


@pytest.mark.parametrize("stage", STAGES)
def test_zero_stage_trains_evaluates_exports_checkpoints_and_resumes(stage_jobs, stage):
    from mlflow.tracking import MlflowClient

    job = stage_jobs[stage]
    summary = job["summary"]
    assert summary["epochs"] == 2 and summary["knn_top1"] is not None and summary["probe_top1"] is not None
    run = MlflowClient(tracking_uri=summary["tracking_uri"]).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["training.deepspeed.zero_stage"] == str(stage)
    assert not [k for k in STEP_METRICS if k not in run.data.metrics]
    artifacts = MlflowClient(tracking_uri=summary["tracking_uri"]).list_artifacts(summary["run_id"])
    assert "encoder" in [a.path for a in artifacts]

    shards = sorted(p.name for p in (Path(summary["checkpoint"]) / "deepspeed").iterdir())
    optimizer_shards = [name for name in shards if name.endswith("optim_states.pt")]
    assert len(optimizer_shards) == (2 if stage > 0 else 0), shards  # one per rank under ZeRO 1-3

    if stage not in RESUMED_STAGES:
        return
    trained = fingerprints(job["first"].stdout + job["first"].stderr)
    resumed = fingerprints(job["again"].stdout + job["again"].stderr)
    epoch = 1 if stage == BROKEN_SHARD_STAGE else 2  # the newest complete checkpoint
    assert resumed[f"resumed {epoch}"] == trained[f"epoch {epoch}"]  # every shard loaded back exactly
    again = json.loads([line for line in job["again"].stdout.splitlines() if line.startswith('{"run_id"')][-1])
    assert again["run_id"] == summary["run_id"] and again["epochs"] == 2


def test_zero3_evaluates_and_exports_the_consolidated_weights(stage_jobs):
    """The ZeRO-3 encoder in MLflow has every parameter at full shape and the values ZeRO-0 reached after
    the same steps from the same seed (sharded reductions differ from ZeRO-0's in the last bits only)."""
    zero0, zero3 = exported_encoder(stage_jobs[0]["summary"]), exported_encoder(stage_jobs[3]["summary"])
    assert {k: v.shape for k, v in zero3.items()} == {k: v.shape for k, v in zero0.items()}
    assert sum(v.numel() for v in zero3.values()) > 10_000
    for key, value in zero0.items():
        assert torch.allclose(zero3[key], value, rtol=1e-4, atol=1e-5), key
    assert stage_jobs[3]["summary"]["knn_top1"] == pytest.approx(stage_jobs[0]["summary"]["knn_top1"], abs=1.0)


@pytest.mark.parametrize("stage", STAGES)
def test_export_of_each_stages_checkpoint_equals_the_encoder_logged_to_mlflow(stage_jobs, stage, tmp_path):
    """`python -m adadim_dist.export` consolidates a DeepSpeed checkpoint offline (ZeRO-0: the model states
    file; ZeRO 1-3: DeepSpeed's zero_to_fp32) into the same encoder the job exported to MLflow."""
    from adadim_dist.export import main
    from adadim_dist.models import load_encoder

    out = tmp_path / f"zero{stage}.safetensors"
    assert main(["--checkpoint", stage_jobs[stage]["summary"]["checkpoint"], "--out", str(out)]) == 0
    exported = load_encoder(out).state_dict()
    logged = exported_encoder(stage_jobs[stage]["summary"])
    assert logged and set(logged) <= set(exported)
    for key, value in logged.items():
        assert torch.equal(exported[key], value), key


def test_checkpoint_missing_a_rank_shard_is_passed_over(stage_jobs):
    """Rank 1's optimizer shard of the newest ZeRO-2 checkpoint was lost before the re-run (stage_jobs): the same
    command resumed from the previous complete checkpoint (epoch 1), not from the broken one, trained epoch 2
    again and wrote it whole."""
    job = stage_jobs[BROKEN_SHARD_STAGE]
    log = job["again"].stdout + job["again"].stderr
    assert "resumed from checkpoint after epoch 1 " in log, log[-3000:]
    assert "epoch 2 parameter fingerprint" in log, log[-3000:]
    newest = Path(job["summary"]["checkpoint"]) / "deepspeed"
    assert (newest / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
