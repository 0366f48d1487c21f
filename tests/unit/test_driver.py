"""Driver checks that run before Ray starts: --fresh, dataset size, path resolution, run files."""

from types import SimpleNamespace

import pytest

from adadim_dist.config import ConfigError, load_config
from adadim_dist.training.driver import (
    check_dataset_fits,
    read_run_file,
    resolve_paths,
    start_fresh,
    write_run_file,
)


def test_fresh_moves_the_previous_run_aside_instead_of_deleting_it(tmp_path):
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job"]))
    write_run_file(cfg, "mlflow_run.json", '{"run_id": "abc"}')
    (tmp_path / "job" / "epoch_0001").mkdir()
    start_fresh(cfg)
    assert read_run_file(cfg, "mlflow_run.json") is None and not (tmp_path / "job").exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("job.old-")]
    assert len(aside) == 1 and (aside[0] / "epoch_0001").is_dir()


@pytest.mark.parametrize("num_samples, subset, ok", [(1024, None, True), (1024, 100, False), (255, None, False)])
def test_each_worker_needs_one_full_batch(num_samples, subset, ok):
    cfg = load_config(None, ["training.global_batch_size=256", "training.num_workers=2"]
                      + ([f"data.subset={subset}"] if subset else []))
    info = SimpleNamespace(num_samples=num_samples)
    if ok:
        check_dataset_fits(cfg, info)
    else:
        with pytest.raises(ConfigError, match="^training.global_batch_size: 256 needs 128 images per worker"):
            check_dataset_fits(cfg, info)


def test_relative_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(load_config(None, ["data.train_path=d/train.beton", "run.storage_path=runs"]))
    assert cfg.data.train_path == tmp_path / "d" / "train.beton" and cfg.run.storage_path == str(tmp_path / "runs")
    remote = resolve_paths(load_config(None, ["run.storage_path=s3://bucket/runs", "tracking.uri=http://m:5000"]))
    assert remote.run.storage_path == "s3://bucket/runs"
    with pytest.raises(ConfigError, match="^tracking.uri: must name an MLflow server"):
        load_config(None, ["run.storage_path=s3://bucket/runs"])
