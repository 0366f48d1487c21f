"""Where runs are tracked, what a resume records, and what is never logged: URI precedence, credential
masking, SQLite on network file systems, resume records, and which errors are the user's."""

from types import SimpleNamespace

import pytest
import torch

from adadim_dist.config import ConfigError, load_config
from adadim_dist.training.checkpoint import save_state
from adadim_dist.training.driver import check_knn_bank, check_tracking_store, resolve_paths, resume_changes, write_run_file
from adadim_dist.training.tracking import filesystem_of, mask_credentials, network_sqlite_store, resolve_tracking_uri

MOUNTS = """\
overlay / overlay rw,relatime 0 0
proc /proc proc rw 0 0
fs-0123.efs.us-east-1.amazonaws.com:/ /mnt/efs nfs4 rw,vers=4.1 0 0
/dev/nvme1n1 /mnt/efs/local-cache ext4 rw 0 0
server:/export /mnt/my\\040share nfs rw 0 0
"""


def test_tracking_uri_is_the_config_key_then_the_environment_then_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("http://other:5000", tmp_path) == "http://other:5000"
    # The environment variable also satisfies object-store runs, which cannot keep a SQLite file.
    from adadim_dist.training.driver import check_tracking_store

    check_tracking_store(load_config(None, ["run.storage_path=s3://bucket/runs"]))


@pytest.mark.parametrize("text, masked", [
    ("http://alice:s3cret@mlflow:5000", "http://***@mlflow:5000"),
    ("postgresql://user:pw@db/mlflow", "postgresql://***@db/mlflow"),
    ("https://mlflow:5000/?token=abc&x=1", "https://mlflow:5000/?token=***&x=1"),
    ("cannot reach http://bob:pw@h:1/health: refused", "cannot reach http://***@h:1/health: refused"),
    ("http://mlflow:5000", "http://mlflow:5000"),
    ("sqlite:////data/runs/mlflow.db", "sqlite:////data/runs/mlflow.db"),
])
def test_credentials_in_uris_are_masked(text, masked):
    assert mask_credentials(text) == masked


def test_the_mount_holding_a_path_is_the_longest_matching_mount_point():
    assert filesystem_of("/mnt/efs/runs/mlflow.db", MOUNTS) == ("/mnt/efs", "nfs4")
    assert filesystem_of("/mnt/efs/local-cache/mlflow.db", MOUNTS) == ("/mnt/efs/local-cache", "ext4")
    assert filesystem_of("/mnt/efsx/mlflow.db", MOUNTS) == ("/", "overlay")  # a prefix of a name is not a parent
    assert filesystem_of("/mnt/my share/runs/mlflow.db", MOUNTS) == ("/mnt/my share", "nfs")


def test_sqlite_on_a_network_file_system_is_named_and_refused(tmp_path):
    reason = network_sqlite_store("sqlite:////mnt/efs/runs/mlflow.db", MOUNTS)
    assert reason == "the SQLite file /mnt/efs/runs/mlflow.db is on a network file system (nfs4 mounted at /mnt/efs)"
    assert network_sqlite_store("sqlite:////mnt/efs/local-cache/mlflow.db", MOUNTS) is None
    assert network_sqlite_store("http://mlflow:5000", MOUNTS) is None
    # The real mount table: this machine's temporary directory is local, so the default store is accepted.
    check_tracking_store(resolve_paths(load_config(None, [f"run.storage_path={tmp_path}"])))


def test_the_multi_node_configs_name_a_tracking_server():
    """The configs name the server (the parsed value, not a comment); where a cluster's nodes get it from the
    environment instead, the launcher's start commands export it on the head and on every worker."""
    import re

    import yaml

    for name in ("cifar10_resnet18", "cifar100_resnet18", "imagenet100_resnet50"):
        assert load_config(f"configs/{name}.yaml", []).tracking.uri.startswith("http://"), name
    launcher = yaml.safe_load(open("cluster/ray-cluster-gpu.yaml").read())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):  # exported in the shell that starts Ray
        assert any(re.search(r"export MLFLOW_TRACKING_URI=http[^;]*;\s*ray start", command)
                   for command in launcher[key]), key


@pytest.mark.parametrize("overrides, message", [
    (["eval.knn_k=[0]"], r"^eval.knn_k.0: Input should be greater than or equal to 1"),
    (["eval.knn_k=[]"], r"^eval.knn_k: .*at least 1 item"),
    (["eval.knn_k=[20, 500]", "eval.bank_size=100"], r"^eval.knn_k: k=500 is larger than eval.bank_size=100"),
])
def test_eval_keys_are_range_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_k_larger_than_the_bank_of_a_small_dataset_is_refused():
    cfg = load_config(None, ["eval.knn_k=[20, 200]", "data.subset=150"])
    with pytest.raises(ConfigError, match=r"^eval.knn_k: k=200 is larger than the kNN bank \(150 training images\)"):
        check_knn_bank(cfg, SimpleNamespace(num_samples=60000))


def test_a_bank_of_its_own_file_is_checked_against_k_and_named_when_missing(tiny_betons, tmp_path):
    """eval.bank_path: the kNN bank comes from that file (e.g. a balanced set for a long-tailed training set)."""
    from adadim_dist.evaluation.online import bank_file, evaluation_sizes

    cfg = load_config(None, [f"data.train_path={tiny_betons['train']}", f"data.test_path={tiny_betons['test']}",
                             f"eval.bank_path={tiny_betons['test']}", "eval.knn_k=[20]"])
    check_knn_bank(cfg, SimpleNamespace(num_samples=60000))
    assert bank_file(cfg) == tiny_betons["test"] and evaluation_sizes(cfg) == (512, 512)
    assert evaluation_sizes(load_config(None, [f"data.train_path={tiny_betons['train']}",
                                               f"data.test_path={tiny_betons['test']}"])) == (1024, 512)
    with pytest.raises(ConfigError, match=r"^eval.knn_k: k=600 is larger than the kNN bank \(512 images of "):
        check_knn_bank(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"knn_k": (600,)})}),
                       SimpleNamespace(num_samples=60000))
    missing = load_config(None, [f"eval.bank_path={tmp_path / 'balanced.beton'}"])
    with pytest.raises(ConfigError, match=r"^eval.bank_path: .*balanced.beton: no such .beton file$"):
        check_knn_bank(missing, SimpleNamespace(num_samples=60000))


def _started_job(tmp_path, epochs_done: int, *overrides: str):
    """A run directory as a job leaves it: its config and a checkpoint after ``epochs_done`` epochs."""
    cfg = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job", "training.epochs=3",
                                           *overrides]))
    import yaml

    write_run_file(cfg, "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
    checkpoint = tmp_path / "job" / f"epoch_{epochs_done:04d}"
    checkpoint.mkdir(parents=True)
    torch.save({"model": {}}, checkpoint / "model.pt")
    save_state(checkpoint, {"epoch": epochs_done, "files": ["model.pt", "state.pt"]})
    return cfg


def test_a_resume_lists_what_it_changes(tmp_path):
    _started_job(tmp_path, 1)
    same = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job", "training.epochs=3"]))
    assert resume_changes(same) == []
    changed = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job", "training.epochs=5",
                                               "optim.lr=0.1"]))
    assert resume_changes(changed) == [("optim.lr", 0.3, 0.1), ("training.epochs", 3, 5)]
    assert resume_changes(resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=new"]))) is None


def test_keys_added_since_a_run_started_are_recorded_as_changes_on_resume(tmp_path):
    """A run trained before model.sync_batchnorm existed resumes with its default (on): recorded, not silent."""
    import yaml

    from adadim_dist.training.driver import ADDED_SINCE

    cfg = _started_job(tmp_path, 1)
    saved = cfg.model_dump(mode="json")
    del saved["model"]["sync_batchnorm"]  # as a config saved by an older version
    write_run_file(cfg, "config.yaml", yaml.safe_dump(saved))
    assert resume_changes(cfg) == [("model.sync_batchnorm", ADDED_SINCE, True)]


def test_a_finished_job_with_a_changed_data_section_says_so_instead_of_reporting_the_old_result(tmp_path):
    _started_job(tmp_path, 3)
    changed = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job", "training.epochs=3",
                                               "data.train_path=/elsewhere/train.beton"]))
    with pytest.raises(ConfigError, match=r"^run.name: job has finished \(3 of 3 epochs\).*data.train_path was "
                                          r".*now '/elsewhere/train.beton'.*another run.name, or add --fresh"):
        resume_changes(changed)
    # More epochs is not a finished job: it trains on.
    longer = resolve_paths(load_config(None, [f"run.storage_path={tmp_path}", "run.name=job", "training.epochs=4"]))
    assert resume_changes(longer) == [("training.epochs", 3, 4)]


def test_only_user_errors_are_one_line_exit_2_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from adadim_dist import run
    from adadim_dist.data.sources import DataError
    from adadim_dist.training import driver

    def fail_with(error):
        def fit(cfg, fresh=False):
            raise error
        return fit

    monkeypatch.setattr(driver, "fit", fail_with(DataError("data.train_path: /x.beton holds no samples")))
    assert run.main([]) == 2
    assert capsys.readouterr().err.strip() == "adadim_dist: error: data.train_path: /x.beton holds no samples"
    monkeypatch.setattr(driver, "fit", fail_with(ValueError("math domain error")))
    with pytest.raises(ValueError, match="math domain error"):  # uncaught: Python prints it and exits 1
        run.main([])


def test_experiments_are_tagged_as_model_development_and_the_summary_names_the_runs_page(tmp_path):
    """MLflow 3's UI opens an experiment without a kind on its GenAI view; tagged, it opens on the runs."""
    from mlflow.tracking import MlflowClient

    from adadim_dist.training.tracking import EXPERIMENT_KIND, get_or_create_experiment, run_page

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = get_or_create_experiment(client, "fresh", tmp_path, local_store=True)
    old = client.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())  # made before the tag
    assert get_or_create_experiment(client, "older", tmp_path, local_store=True) == old
    for experiment_id in (new, old):
        tags = client.get_experiment(experiment_id).tags
        assert all(tags.get(k) == v for k, v in EXPERIMENT_KIND.items())
    assert run_page("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert run_page(f"sqlite:///{tmp_path}/mlflow.db", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
