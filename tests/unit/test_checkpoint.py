"""Checkpoint completeness: every rank's shard listed in state.pt must be on disk."""

import torch

from adadim_dist.training.checkpoint import (STATE_FILE, checkpoint_files, is_complete, latest_complete_checkpoint,
                                             save_state)


def write_checkpoint(directory, files, listed=True):
    directory.mkdir(parents=True)
    for name in files:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save({}, directory / name)
    state = {"epoch": int(directory.name[-4:])}
    if listed:
        state["files"] = sorted(files)
    save_state(directory, state)


SHARDS = ["deepspeed/mp_rank_00_model_states.pt", "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt",
          "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_a_missing_rank_shard_makes_the_previous_checkpoint_the_latest(tmp_path):
    write_checkpoint(tmp_path / "epoch_0001", SHARDS)
    write_checkpoint(tmp_path / "epoch_0002", SHARDS)
    assert latest_complete_checkpoint(tmp_path, "deepspeed") == tmp_path / "epoch_0002"
    (tmp_path / "epoch_0002" / SHARDS[2]).unlink()
    assert not is_complete(tmp_path / "epoch_0002", "deepspeed")
    assert latest_complete_checkpoint(tmp_path, "deepspeed") == tmp_path / "epoch_0001"


def test_checkpoint_files_lists_every_file_relative_to_the_directory(tmp_path):
    write_checkpoint(tmp_path / "epoch_0001", SHARDS)
    assert checkpoint_files(tmp_path / "epoch_0001") == sorted(SHARDS + [STATE_FILE])


def test_checkpoints_without_a_manifest_use_the_files_every_strategy_writes(tmp_path):
    write_checkpoint(tmp_path / "epoch_0001", ["model.pt", "trainer.pt"], listed=False)
    assert is_complete(tmp_path / "epoch_0001", "ddp")
    (tmp_path / "epoch_0001" / "trainer.pt").unlink()
    assert not is_complete(tmp_path / "epoch_0001", "ddp")


def test_a_truncated_state_file_is_not_complete(tmp_path):
    write_checkpoint(tmp_path / "epoch_0001", SHARDS)
    (tmp_path / "epoch_0001" / STATE_FILE).write_bytes(b"\x80\x02trunc")
    assert not is_complete(tmp_path / "epoch_0001", "deepspeed")
