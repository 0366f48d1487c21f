"""Run files, checkpoint listing, completeness, the resume choice and the refusal of a changed finished job on an
object store: against a real S3-compatible server (moto's, in its own process on 127.0.0.1), through the same
pyarrow URIs Ray Train resolves ``run.storage_path`` with."""

from __future__ import annotations

import pathlib

import pyarrow.fs
import pytest
import torch
import yaml

from adadim_dist.config import ConfigError, load_config
from adadim_dist.training.checkpoint import CheckpointError, is_complete, latest_complete_checkpoint, load_state, save_state
from adadim_dist.training.driver import read_run_file, resume_changes, run_location, start_fresh, write_run_file
from adadim_dist.training.resume import ResumeChoice, choose_resume, open_choice
from adadim_dist.training.storage import Location

SHARDS = ["deepspeed/mp_rank_00_model_states.pt", "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
          "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"]


@pytest.fixture()
def bucket(s3_server):
    return s3_server.bucket()


def upload_checkpoint(tmp_path, run_uri: str, epoch: int, files=SHARDS) -> None:
    """A checkpoint written locally, then copied to the store the way Ray persists one (pyarrow copy_files)."""
    local = tmp_path / f"epoch_{epoch:04d}"
    for name in files:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": epoch}, local / name)
    save_state(local, {"epoch": epoch, "files": sorted(files)})
    target = Location.of(run_uri) / local.name
    pyarrow.fs.copy_files(str(local), target.path, destination_filesystem=target.fs)


def test_a_location_on_the_store_reads_writes_lists_and_names_itself_without_its_secret(s3_server, bucket):
    root = Location.of(s3_server.uri(bucket, "runs"))
    run = root / "job"
    assert not run.exists() and run.children() == [] and read_text_or_none(run / "x") is None
    (run / "config.yaml").write_text("a: 1\n")
    (run / "epoch_0002" / "state.pt").write_bytes(b"x")
    (run / "epoch_0010" / "state.pt").write_bytes(b"y")
    assert (run / "config.yaml").read_text() == "a: 1\n" and (run / "config.yaml").is_file() and run.is_dir()
    assert [c.name for c in run.children("epoch_*", directories_only=True)] == ["epoch_0002", "epoch_0010"]
    assert run.tree() == {"config.yaml", "epoch_0002", "epoch_0002/state.pt", "epoch_0010", "epoch_0010/state.pt"}
    # The URI names it again in another process (a worker): endpoint and credentials kept, path joined.
    again = Location.of((run / "epoch_0002").uri)
    assert (again / "state.pt").read_bytes() == b"x" and again.parent == run
    assert again.path == f"{bucket}/runs/job/epoch_0002"
    assert str(again) == f"s3://***@{bucket}/runs/job/epoch_0002"  # for messages: no secret, no endpoint options


def test_delete_removes_a_file_or_an_empty_directory_and_keeps_one_with_contents(s3_server, bucket, tmp_path):
    """What a refused start undoes (its run file, then the run directory it made), locally and on the store."""
    for root in (Location.of(tmp_path / "runs"), Location.of(s3_server.uri(bucket, "runs"))):
        run = root / "job"
        (run / "mlflow_run.json").write_text("{}")
        (run / "epoch_0001" / "state.pt").write_bytes(b"x")
        (run / "mlflow_run.json").delete()
        run.delete()  # not empty: kept
        assert not (run / "mlflow_run.json").exists() and (run / "epoch_0001" / "state.pt").is_file()
        (run / "epoch_0001" / "state.pt").delete()
        (run / "epoch_0001").delete()
        run.delete()
        assert not run.exists(), root


def read_text_or_none(location: Location):
    return location.read_text() if location.is_file() else None


def test_the_newest_complete_checkpoint_on_the_store_is_chosen_and_a_missing_shard_passes_it_over(
        s3_server, bucket, tmp_path):
    run_uri = s3_server.uri(bucket, "runs/job")
    assert latest_complete_checkpoint(run_uri, "deepspeed") is None
    upload_checkpoint(tmp_path, run_uri, 1)
    upload_checkpoint(tmp_path, run_uri, 2)
    newest = latest_complete_checkpoint(run_uri, "deepspeed")
    assert newest.name == "epoch_0002" and load_state(newest)["epoch"] == 2
    s3_server.client().delete_object(Bucket=bucket, Key=f"runs/job/epoch_0002/{SHARDS[2]}")
    assert not is_complete(Location.of(run_uri) / "epoch_0002", "deepspeed")
    assert latest_complete_checkpoint(run_uri, "deepspeed").name == "epoch_0001"
    with pytest.raises(CheckpointError, match=r"^checkpoint: s3://\*\*\*@[\w-]+/runs/job/epoch_0003 has no state.pt$"):
        load_state(Location.of(run_uri) / "epoch_0003")


def test_rank_0_chooses_a_checkpoint_on_the_store_and_every_rank_opens_a_local_copy(s3_server, bucket, tmp_path):
    """What a (re)started worker group does with ``run_dir`` a URI: no registered checkpoint (the driver died
    before Ray registered it), the newest complete one found on the store, downloaded, then removed again."""
    run_uri = s3_server.uri(bucket, "runs/job")
    upload_checkpoint(tmp_path, run_uri, 1)
    upload_checkpoint(tmp_path, run_uri, 2)
    s3_server.client().delete_object(Bucket=bucket, Key=f"runs/job/epoch_0002/{SHARDS[0]}")
    choice = choose_resume(None, run_uri, None, "deepspeed")
    assert choice == ResumeChoice("disk", 1, "epoch_0001")
    source, problem = open_choice(choice, None, run_uri, None, "deepspeed")
    assert problem is None
    with source as directory:
        copied = pathlib.Path(directory)
        assert load_state(copied)["epoch"] == 1 and (copied / SHARDS[2]).is_file()
    assert not copied.exists()
    # The driver's resume_dir alone (no run_dir) names the same checkpoint.
    resume_dir = (Location.of(run_uri) / "epoch_0001").uri
    assert choose_resume(None, None, resume_dir, "deepspeed") == choice
    assert open_choice(choice, None, None, resume_dir, "deepspeed")[1] is None
    # A rank whose view lacks it says so (every rank then stops with one line).
    missing = open_choice(ResumeChoice("disk", 3, "epoch_0003"), None, run_uri, None, "deepspeed")[1]
    assert "epoch_0003 is missing or incomplete there" in missing and s3_server.SECRET_KEY not in missing


def job_config(s3_server, bucket, *overrides):
    return load_config(None, [f"run.storage_path={s3_server.uri(bucket, 'runs')}", "run.name=job",
                              "tracking.uri=http://127.0.0.1:9", "training.epochs=2", *overrides])


def test_run_files_fresh_and_the_refusal_of_a_changed_finished_job_work_on_the_store(s3_server, bucket, tmp_path):
    from adadim_dist.config import storable

    cfg = job_config(s3_server, bucket)
    assert read_run_file(cfg, "config.yaml") is None and resume_changes(cfg) is None
    write_run_file(cfg, "config.yaml", yaml.safe_dump(storable(cfg), sort_keys=False))
    run_uri = run_location(cfg).uri
    upload_checkpoint(tmp_path, run_uri, 2, files=["model.pt", "trainer.pt"])
    assert resume_changes(cfg) == []
    changed = job_config(s3_server, bucket, "optim.lr=0.1")
    with pytest.raises(ConfigError, match=r"^run.name: job has finished \(2 of 2 epochs\).*optim.lr was 0.3, now 0.1"):
        resume_changes(changed)
    assert resume_changes(job_config(s3_server, bucket, "training.epochs=3")) == [("training.epochs", 2, 3)]
    # No stored copy holds the secret: config.yaml keeps the URI with its user info masked.
    assert s3_server.SECRET_KEY not in read_run_file(cfg, "config.yaml")
    start_fresh(cfg)  # an object store cannot rename a directory: copied aside, then deleted
    assert read_run_file(cfg, "config.yaml") is None
    keys = [key for key in s3_server.objects(bucket) if not key.endswith("/")]  # less pyarrow's directory markers
    assert {key.split("/")[2] for key in keys if key.startswith("runs/job.old-")} == {"config.yaml", "epoch_0002"}
    assert not [key for key in keys if key.startswith("runs/job/")]
