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


def test_every_shipped_sweep_and_study_validates():
    sweeps = sorted((REPO / "configs/tune").glob("*.yaml"))
    studies = sorted((REPO / "configs/study").glob("*.yaml"))
    assert sweeps and studies
    for path in sweeps:
        sweep, base = load_sweep(path)
        assert sweep.search_space and base.run.name
    for path in studies:
        sweep, base = load_sweep(path)
        assert sweep.is_study and sweep.variants and sweep.seeds and base.run.name


def test_the_tuned_comparison_gives_every_arm_the_same_budget_and_selects_on_validation():
    """configs/study/tuned: the same base, trials, epochs and resources for every arm; every arm tunes the
    learning rate over the same range; selection data is the validation split, not the test set."""
    loaded = {arm: load_sweep(REPO / f"configs/study/tuned/tune_{arm}.yaml") for arm in ("vicreg", "ntxent", "adadim")}
    budgets = {(s.num_samples, s.scheduler.name, b.training.epochs, b.data.train_path, s.trial)
               for s, b in loaded.values()}
    assert len(budgets) == 1
    assert len({s.search_space["optim.lr"] for s, _ in loaded.values()}) == 1
    for sweep, base in loaded.values():
        assert sweep.metric == "knn" and base.data.validation_size == 10000
        assert "test" not in str(base.data.test_path) and base.model.sync_batchnorm
    assert {"objective.gamma", "objective.mi_sign", "objective.balance"} <= set(loaded["adadim"][0].search_space)


def test_asha_needs_a_metric_every_epoch(tmp_path):
    with pytest.raises(ConfigError, match=r"^eval\.every_epochs: ASHA compares trials on every epoch"):
        load_sweep(_write(tmp_path, overrides=["eval.every_epochs=2"]))
    load_sweep(_write(tmp_path, overrides=["eval.every_epochs=2"], scheduler={"name": "fifo"}))
    load_sweep(_write(tmp_path, overrides=["eval.every_epochs=2"], metric="rankme"))  # in every epoch's report


@pytest.mark.parametrize("layout", ["auto", "one_worker_per_node", "as_given"])
def test_a_sweep_lays_out_its_trials_from_its_trial_section_whatever_the_base_layout(tmp_path, layout):
    from adadim_dist.tune import trial_config

    sweep, base = load_sweep(_write(tmp_path, overrides=[f"training.layout={layout}", "eval.every_epochs=1"],
                                    trial={"num_workers": 2, "cpus_per_worker": 0.45, "trial_cpus": 0.1}))
    assert base.training.layout == layout
    cfg = trial_config(base.model_dump(mode="json"), {"objective.gamma": 2.0}, "trial", sweep)
    # as_given: the driver keeps the trial's 2 workers × 0.45 CPUs (several trials share a node)
    assert (cfg.training.layout, cfg.training.num_workers, cfg.training.cpus_per_worker) == ("as_given", 2, 0.45)
    assert not cfg.training.one_worker_per_node


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


# ---------------------------------------------------------------------------------------------------- studies
STUDY = REPO / "configs/study/adadim_fmnist.yaml"


def _study(tmp_path, **fields):
    tree = {"base_config": str(REPO / "configs/fmnist_smoke.yaml"), "scheduler": {"name": "fifo"},
            "seeds": [0, 1], "variants": {"base": [], "vicreg": ["objective.alpha.mode=fixed",
                                                                   "objective.alpha.value=0.0"]}}
    tree.update(fields)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_the_shipped_study_expands_to_every_variant_times_every_seed_and_each_trial_validates():
    from ray.tune.search.variant_generator import generate_variants

    from adadim_dist.config import flatten
    from adadim_dist.sweep import to_tune_space
    from adadim_dist.tune import study_labels, trial_config

    sweep, base = load_sweep(STUDY)
    assert sweep.scheduler.name == "fifo" and sweep.num_samples == 1 and len(sweep.seeds) >= 3
    assert len(sweep.variants) >= 8 and sweep.num_grid_trials == len(sweep.variants) * len(sweep.seeds)
    assert base.data.subset is None and base.training.epochs >= 5  # the full training set, >= 5 epochs
    trials = [params for _, params in generate_variants(to_tune_space(sweep))]
    # Seed-major: all variants of the first seed run before any second seed (a stopped study stays balanced).
    assert [(t["training.seed"], t["study.variant"]) for t in trials] == \
        [(seed, name) for seed in sweep.seeds for name in sweep.variants]
    configs = {}
    for params in trials:
        cfg = trial_config(base.model_dump(mode="json"), params, "trial", sweep)
        assert cfg.training.seed == params["training.seed"]
        assert study_labels(sweep, params, cfg) == {"study.name": sweep.name, "study.variant": params["study.variant"],
                                                    "study.seed": str(params["training.seed"])}
        configs[params["study.variant"], params["training.seed"]] = cfg
    alpha = {name: configs[name, 0].objective.alpha for name in sweep.variants}
    objective = {name: configs[name, 0].objective for name in sweep.variants}
    assert (alpha["vicreg"].mode, alpha["vicreg"].value, objective["vicreg"].mi_sign) == ("fixed", 0.0, "off")
    assert (alpha["ntxent"].mode, alpha["ntxent"].value, objective["ntxent"].mi_sign) == ("fixed", 1.0, "off")
    assert (alpha["adadim"].mode, alpha["adadim"].normalise, objective["adadim"].mi_sign) == \
        ("adaptive", "min_n_d", "maximize")
    assert objective["adadim_no_mi"].mi_sign == "off" and objective["adadim_mi_min"].mi_sign == "minimize"
    assert (alpha["fixed_half"].mode, alpha["fixed_half"].value) == ("fixed", 0.5)
    assert (alpha["linear_ramp"].mode, alpha["linear_ramp"].start, alpha["linear_ramp"].end) == ("linear", 0.0, 1.0)
    assert alpha["adadim_warmup_minmax"].normalise == "warmup_minmax"
    # Equal budget: everything outside objective.* (and the seed) is the same in every trial.
    shared = {key: {k: v for k, v in flatten(cfg).items() if not k.startswith("objective.") and k != "training.seed"}
              for key, cfg in configs.items()}
    assert all(s == shared["adadim", 0] for s in shared.values())


def test_a_study_variant_must_validate_and_keep_the_budget(tmp_path):
    with pytest.raises(ConfigError, match=r"^variants\.wide: model\.small_cnn_width is 32 but 16 in variant base;"):
        load_sweep(_study(tmp_path, variants={"base": [], "wide": ["model.small_cnn_width=32"]}))
    with pytest.raises(ConfigError, match=r"^variants\.bad\.objective\.alpha\.value: "):
        load_sweep(_study(tmp_path, variants={"base": [], "bad": ["objective.alpha.value=2"]}))
    with pytest.raises(ConfigError, match=r"^variants\.seeded: sets training\.seed"):
        load_sweep(_study(tmp_path, variants={"seeded": ["training.seed=4"]}))
    with pytest.raises(ConfigError, match=r"^variants\.typo: objective\.alpha\.mod: an override must look like"):
        load_sweep(_study(tmp_path, variants={"typo": ["objective.alpha.mod"]}))


def test_variant_keys_let_each_arm_keep_its_own_tuned_learning_rate_and_nothing_else(tmp_path):
    arms = {"a": ["optim.lr=0.2"], "b": ["optim.lr=0.5", "objective.temperature=0.1"]}
    with pytest.raises(ConfigError, match=r"^variants\.b: optim\.lr is 0\.5 but 0\.2 in variant a; .*objective\."):
        load_sweep(_study(tmp_path, variants=arms))
    sweep, _ = load_sweep(_study(tmp_path, variants=arms, variant_keys=["objective.", "optim.lr"]))
    assert sweep.variant_keys == ["objective.", "optim.lr"]
    # A name without the trailing '.' is one key, not a prefix.
    with pytest.raises(ConfigError, match=r"^variants\.b: optim\.weight_decay is"):
        load_sweep(_study(tmp_path, variants={"a": [], "b": ["optim.weight_decay=0.01"]}, variant_keys=["optim.w"]))


def test_a_study_needs_fifo_one_sample_and_distinct_seeds(tmp_path):
    with pytest.raises(ConfigError, match=r"^scheduler\.name: a study .* needs fifo"):
        load_sweep(_study(tmp_path, scheduler={"name": "asha"}))
    with pytest.raises(ConfigError, match=r"^num_samples: a study runs every variant × seed once, got 3"):
        load_sweep(_study(tmp_path, num_samples=3))
    with pytest.raises(ConfigError, match=r"^seeds: repeated seed"):
        load_sweep(_study(tmp_path, seeds=[1, 1]))
    with pytest.raises(ConfigError, match=r"^search_space: required \(or variants and seeds"):
        load_sweep(_write(tmp_path, search_space={}))
    with pytest.raises(ConfigError, match=r"^variants\.a b: a variant name is"):
        load_sweep(_study(tmp_path, variants={"a b": []}))
    sweep, _ = load_sweep(_study(tmp_path))
    assert sweep.is_study and sweep.num_grid_trials == 4 and sweep.param_keys == ["study.variant", "training.seed"]


def test_trial_overrides_put_the_variant_before_the_sampled_values():
    from adadim_dist.sweep import SweepConfig, trial_overrides

    half = ["objective.alpha.mode=fixed", "objective.alpha.value=0.5"]
    sweep = SweepConfig.model_validate({"scheduler": {"name": "fifo"}, "seeds": [3], "variants": {"half": half}})
    assert trial_overrides(sweep, {"study.variant": "half", "training.seed": 3}) == \
        ["objective.alpha.mode=fixed", "objective.alpha.value=0.5", "training.seed=3"]
    assert trial_overrides(sweep, {"training.seed": 3}) == ["training.seed=3"]
