"""Sweep files: validated like training configs, every search-space value checked before Ray starts."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adadim_dist.config import ConfigError
from adadim_dist.sweep import concurrent_trials, load_sweep, overrides_from_params

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, **fields):
    tree = {"base_config": str(REPO / "configs/fmnist_smoke.yaml"),
            "search_space": {"objective.gamma": {"type": "loguniform", "low": 0.1, "high": 10.0}}}
    tree.update(fields)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_every_shipped_sweep_validates():
    sweeps = sorted((REPO / "configs/tune").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        sweep, base = load_sweep(path)
        assert sweep.search_space and base.run.name


def test_a_bad_value_anywhere_in_a_list_is_refused_with_its_key(tmp_path):
    path = _write(tmp_path, search_space={"model.small_cnn_width": {"type": "grid", "values": [16, 8, 1]}})
    with pytest.raises(ConfigError, match=r"^search_space\.model\.small_cnn_width: .*greater than or equal to 4"):
        load_sweep(path)


def test_the_upper_end_of_a_range_is_checked(tmp_path):
    path = _write(tmp_path, search_space={"objective.alpha.ema": {"type": "uniform", "low": 0.0, "high": 1.5}})
    with pytest.raises(ConfigError, match=r"^search_space\.objective\.alpha\.ema"):
        load_sweep(path)


def test_unknown_search_key_and_unknown_sweep_field_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"search_space\.objective\.gamma_typo"):
        load_sweep(_write(tmp_path, search_space={"objective.gamma_typo": {"type": "choice", "values": [1]}}))
    with pytest.raises(ConfigError, match=r"num_sample"):
        load_sweep(_write(tmp_path, num_sample=3))
    with pytest.raises(ConfigError, match=r"^search_space\.optim\.lr\..*low: loguniform needs low > 0"):
        load_sweep(_write(tmp_path, search_space={"optim.lr": {"type": "loguniform", "low": 0.0, "high": 1.0}}))
    with pytest.raises(ConfigError, match=r"^search_space\.optim\.lr\.type: must be one of .*got 'logu'$"):
        load_sweep(_write(tmp_path, search_space={"optim.lr": {"type": "logu", "low": 0.1, "high": 1.0}}))


def test_cli_exits_2_with_one_line_before_starting_ray(tmp_path):
    path = _write(tmp_path, search_space={"model.small_cnn_width": {"type": "choice", "values": [2]}})
    out = subprocess.run([sys.executable, "-m", "adadim_dist.tune", "--config", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "adadim_dist: error: search_space.model.small_cnn_width: Input should be greater than or equal to 4 (got 2)"
    ]
    assert "ray" not in out.stdout.lower()


def test_concurrent_trials_fit_the_cluster():
    from adadim_dist.sweep import SweepConfig

    sweep = SweepConfig.model_validate({"search_space": {"optim.lr": {"type": "choice", "values": [0.1]}},
                                        "trial": {"num_workers": 2, "cpus_per_worker": 0.45, "trial_cpus": 0.1}})
    assert concurrent_trials(sweep, 2, 0, use_gpu=False) == 2  # 1.0 CPU per trial
    assert concurrent_trials(sweep, 16, 2, use_gpu=True) == 1  # GPUs bound it
    assert concurrent_trials(sweep, 0.5, 0, use_gpu=False) == 1  # never zero
    capped = sweep.model_copy(update={"max_concurrent_trials": 3})
    assert concurrent_trials(capped, 64, 0, use_gpu=False) == 3


def test_sampled_values_become_yaml_overrides():
    assert overrides_from_params({"model.projector_dims": [64, 32], "objective.mi_sign": "off",
                                  "optim.lr": 0.5}) == \
        ["model.projector_dims=[64, 32]", "objective.mi_sign='off'", "optim.lr=0.5"]
