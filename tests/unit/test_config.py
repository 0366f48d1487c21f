"""Config: YAML + dotted overrides → validated model; every user error names its dotted key."""

import subprocess
import sys
from pathlib import Path

import pytest

from adadim_dist.config import ConfigError, flatten, load_config

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_config_validates():
    configs = sorted((REPO / "configs").rglob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        if "tune" in path.parts or "study" in path.parts:
            continue  # sweep and study files have their own schema (tests/unit/test_sweep.py)
        load_config(path)


def test_overrides_are_parsed_as_yaml_and_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {epochs: 3, global_batch_size: 64}\n")
    cfg = load_config(path, ["training.epochs=7", "objective.alpha.ema=0.5", "model.projector_dims=[64,32]"])
    assert cfg.training.epochs == 7 and cfg.training.global_batch_size == 64
    assert cfg.objective.alpha.ema == 0.5 and cfg.model.projector_dims == (64, 32)
    assert cfg.training.batch_size_per_worker == 32


def test_a_config_lays_its_keys_over_its_base_config(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text(
        "training: {epochs: 3, global_batch_size: 64}\nobjective: {alpha: {mode: adaptive, ema: 0.9}, gamma: 2.0}\n")
    (tmp_path / "c.yaml").write_text(
        "base_config: base/b.yaml\ntraining: {epochs: 5}\nobjective: {alpha: {mode: fixed, value: 1.0}}\n")
    cfg = load_config(tmp_path / "c.yaml", ["objective.gamma=0.5"])
    assert (cfg.training.epochs, cfg.training.global_batch_size) == (5, 64)
    assert (cfg.objective.alpha.mode, cfg.objective.alpha.value, cfg.objective.alpha.ema) == ("fixed", 1.0, 0.9)
    assert cfg.objective.gamma == 0.5


@pytest.mark.parametrize("base, message", [
    ("missing.yaml", "^base_config: no such file .*missing.yaml"),
    ("c.yaml", "^base_config: .*c.yaml is its own base"),
    ("[1, 2]", "^base_config: must be a path"),
])
def test_a_bad_base_config_is_named(tmp_path, base, message):
    (tmp_path / "c.yaml").write_text(f"base_config: {base}\ntraining: {{epochs: 5}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=0", "^training.epochs: "),
        ("training.epochs=abc", "^training.epochs: "),
        ("traning.epochs=3", "^traning: unknown key"),
        ("objective.alpha.mode=step", "^objective.alpha.mode: "),
        ("training.global_batch_size=255", "^training.global_batch_size: 255 is not divisible"),
        ("data.view_b.crop_scale=[0.9,0.1]", "^data.view_b.crop_scale: "),
        ("noequals", "^noequals: an override must look like"),
        ("training.deepspeed.bf16=true", "^training.deepspeed.bf16: .*training.mixed_precision=true"),
        ("objective.balance=gradnorm", "^objective.balance: "),
        ("data.validation_size=0", "^data.validation_size: "),
    ],
)
def test_bad_values_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_flatten_gives_dotted_params():
    flat = flatten(load_config())
    assert flat["objective.alpha.mode"] == "adaptive" and flat["training.strategy"] == "ddp"


def test_cli_reports_bad_key_in_one_line_with_exit_code_2(tmp_path):
    """The entry point stops before any work: one line on stderr naming the key, exit 2, nothing written."""
    out = subprocess.run(
        [sys.executable, "-m", "adadim_dist.run", "training.epochs=-1", f"run.storage_path={tmp_path}/runs"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("adadim_dist: error: training.epochs:")
    assert not (tmp_path / "runs").exists()


def test_cli_missing_config_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "adadim_dist.run", "--config", "nope.yaml"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "--config: no such file nope.yaml" in out.stderr


def test_options_may_follow_the_overrides():
    from adadim_dist.run import parse_args

    args = parse_args(["--config", "configs/fmnist_smoke.yaml", "training.epochs=3", "--fresh", "eval.knn_k=[20]"])
    assert args.fresh and args.overrides == ["training.epochs=3", "eval.knn_k=[20]"]


@pytest.mark.parametrize("overrides, message", [
    (["data.validation_size=100", "data.test_path=null"], "^data.validation_size: needs data.test_path"),
    (["data.validation_size=100", "data.train_imbalance_ratio=10"], "^data.validation_size: cannot be combined"),
])
def test_a_validation_split_needs_a_labelled_file_of_its_own(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_lars_under_zero_partitions_is_refused_with_the_alternatives(stage):
    """ZeRO 1-3 hand the optimizer flat 1-D shards: LARS would silently lose its trust ratio and weight decay."""
    with pytest.raises(ConfigError, match="^optim.name: lars cannot run .*zero_stage=.*use training.strategy=ddp"):
        load_config(None, ["optim.name=lars", "training.strategy=deepspeed", f"training.deepspeed.zero_stage={stage}"])


@pytest.mark.parametrize("overrides", [
    ["optim.name=lars", "training.strategy=ddp"],
    ["optim.name=lars", "training.strategy=deepspeed", "training.deepspeed.zero_stage=0"],
    ["optim.name=adamw", "training.strategy=deepspeed", "training.deepspeed.zero_stage=3"],
])
def test_supported_optimizer_strategy_combinations_validate(overrides):
    load_config(None, overrides)


def test_a_job_can_stop_early_in_a_longer_schedule():
    """Tuning trials train the first epochs of the final runs' schedule: the schedule is training.epochs long."""
    cfg = load_config(None, ["training.epochs=15", "training.stop_after_epochs=3"])
    assert (cfg.training.epochs, cfg.training.trained_epochs) == (15, 3)
    assert load_config(None, ["training.epochs=4"]).training.trained_epochs == 4
    with pytest.raises(ConfigError, match=r"^training.stop_after_epochs: 16 is beyond training.epochs \(15\)"):
        load_config(None, ["training.epochs=15", "training.stop_after_epochs=16"])
