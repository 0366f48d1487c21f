"""Sweep definitions: a YAML file naming a base config, a search space over dotted config keys, the metric,
the scheduler and the per-trial resources. Validated like the training config (unknown keys refused).

A *study* is a sweep file with ``variants`` (named lists of dotted overrides) and ``seeds``: both become grid
axes (``study.variant`` and ``training.seed``), so every variant runs once per seed, FIFO, at equal budget
(variants may differ only in ``objective.*`` keys, or in the keys ``variant_keys`` names, such as each
arm's tuned ``optim.lr``; see ``configs/study/``)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import Config, ConfigError, _format_error, _set_dotted, flatten, load_config, parse_overrides

# What `metric` names, as reported by the worker each epoch. rankme = effective rank of R (label-free).
METRICS = {"knn": "knn_top1", "probe": "probe_top1", "rankme": "rankme"}
# A study's grid axes, as Tune parameters (and MLflow params of every trial).
VARIANT_KEY = "study.variant"
SEED_KEY = "training.seed"
# What variants of a study may change: everything else (encoder, epochs, batch, schedule, views) is shared.
VARIANT_SCOPE = "objective."
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class Grid(_Strict):
    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)


class Uniform(_Strict):
    type: Literal["uniform", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _bounds(self) -> "Uniform":
        if not self.low < self.high:
            raise ValueError(f"low: must be < high, got low={self.low}, high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"low: loguniform needs low > 0, got {self.low}")
        return self


# Discriminated on `type`, so an error names the fields of the domain the user meant.
Domain = Annotated[Union[Choice, Grid, Uniform], Field(discriminator="type")]


class SchedulerConfig(_Strict):
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it can be stopped
    reduction_factor: float = Field(2.0, gt=1)


class TrialResources(_Strict):
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.45, gt=0)
    trial_cpus: float = Field(0.1, gt=0)  # the trial function itself only waits on its trainer


class SweepConfig(_Strict):
    name: str = "adadim-sweep"
    base_config: Path | None = None
    overrides: list[str] = []
    metric: Literal["knn", "probe", "rankme"] = "knn"
    num_samples: int = Field(4, ge=1)
    seed: int = 0
    max_concurrent_trials: int | None = Field(None, ge=1)  # None = what the cluster's CPUs/GPUs fit
    scheduler: SchedulerConfig = SchedulerConfig()
    trial: TrialResources = TrialResources()
    search_space: dict[str, Domain] = {}
    variants: dict[str, list[str]] = {}  # study: name → dotted overrides of the base config ([] = the base)
    seeds: list[int] = []  # study: every variant runs once with each training.seed
    # study: the config keys (or key prefixes ending in '.') in which variants may differ; everything else is
    # shared, so the budget is equal. A tuned comparison adds each arm's own optim.lr.
    variant_keys: list[str] = [VARIANT_SCOPE]

    @model_validator(mode="before")
    @classmethod
    def _a_study_samples_once(cls, tree: Any) -> Any:
        if isinstance(tree, dict) and (tree.get("variants") or tree.get("seeds")) and "num_samples" not in tree:
            return {**tree, "num_samples": 1}
        return tree

    @model_validator(mode="after")
    def _space_or_study(self) -> "SweepConfig":
        if not (self.search_space or self.variants or self.seeds):
            raise ValueError("search_space: required (or variants and seeds, for a study)")
        for name in self.variants:
            if not _VARIANT_NAME.match(name):
                raise ValueError(f"variants.{name}: a variant name is letters, digits, '_', '.' and '-'")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: repeated seed in {self.seeds}")
        if self.is_study:
            if self.scheduler.name != "fifo":
                raise ValueError("scheduler.name: a study (variants, seeds) needs fifo: ASHA would stop some "
                                 "trials early, and the variants would no longer have equal budget")
            if self.num_samples != 1:
                raise ValueError(f"num_samples: a study runs every variant × seed once, got {self.num_samples}; "
                                 "add seeds instead")
            if SEED_KEY in self.search_space and self.seeds:
                raise ValueError(f"search_space.{SEED_KEY}: the seeds list is already the seed axis")
        return self

    @property
    def is_study(self) -> bool:
        return bool(self.variants or self.seeds)

    @property
    def metric_key(self) -> str:
        return METRICS[self.metric]

    @property
    def param_keys(self) -> list[str]:
        """The Tune parameters a trial gets: search-space keys, then the study's axes."""
        return [*self.search_space, *([VARIANT_KEY] if self.variants else []), *([SEED_KEY] if self.seeds else [])]

    @property
    def num_grid_trials(self) -> int:
        """Trials of the grid axes (variants × seeds × grid values) per sample."""
        count = max(len(self.variants), 1) * max(len(self.seeds), 1)
        for domain in self.search_space.values():
            if isinstance(domain, Grid):
                count *= len(domain.values)
        return count


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, Config]:
    """Read and validate a sweep file; returns it and the base training config (with the sweep's overrides).

    Each search-space key must be a valid config key: it is checked by applying a sample of its domain.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        sweep = SweepConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    base_path = sweep.base_config
    if base_path is not None and not base_path.is_absolute() and not base_path.exists():
        base_path = path.parent / base_path
    base = load_config(base_path, list(sweep.overrides))
    for key, domain in sweep.search_space.items():
        # Every listed value, and both ends of a range, must give a valid config: a trial should never be
        # the first to find out.
        samples = domain.values if isinstance(domain, (Choice, Grid)) else [domain.low, domain.high]
        for sample in samples:
            try:
                load_config(base_path, [*sweep.overrides, *overrides_from_params({key: sample})])
            except ConfigError as err:
                raise ConfigError(f"search_space.{err}") from None
    # rankme comes with every epoch's training statistics; kNN and the probe only with an evaluation.
    if sweep.scheduler.name == "asha" and sweep.metric != "rankme" and base.eval.every_epochs != 1:
        raise ConfigError(f"eval.every_epochs: ASHA compares trials on every epoch's {sweep.metric_key}, so the base "
                          f"config must evaluate every epoch (got {base.eval.every_epochs}); set "
                          "eval.every_epochs=1, or scheduler.name=fifo")
    check_variants(sweep, base_path)
    return sweep, base


def check_variants(sweep: SweepConfig, base_path: Path | None) -> None:
    """Every variant × seed must give a valid config, and the variants may differ only in ``objective.*``
    (equal budget: same encoder, epochs, batch, schedule, augmentations)."""
    reference: tuple[str, dict[str, Any]] | None = None
    for name, variant_overrides in sweep.variants.items():
        for key, _ in _parse_variant(name, variant_overrides):
            if key == SEED_KEY:
                raise ConfigError(f"variants.{name}: sets {SEED_KEY}, which the seeds list sets for every variant")
        for seed in sweep.seeds or [None]:
            seed_override = [] if seed is None else [f"{SEED_KEY}={seed}"]
            try:
                cfg = load_config(base_path, [*sweep.overrides, *variant_overrides, *seed_override])
            except ConfigError as err:
                raise ConfigError(f"variants.{name}.{err}") from None
        shared = {k: v for k, v in flatten(cfg).items() if not _in_variant_scope(k, sweep.variant_keys)
                  and k != SEED_KEY}
        if reference is None:
            reference = (name, shared)
            continue
        first_name, first = reference
        for key in sorted(first.keys() | shared.keys()):
            if first.get(key) != shared.get(key):
                raise ConfigError(
                    f"variants.{name}: {key} is {shared.get(key)!r} but {first.get(key)!r} in variant {first_name}; "
                    f"variants may differ only in {', '.join(sweep.variant_keys)} (variant_keys; equal budget): put "
                    "it in overrides"
                )


def _in_variant_scope(key: str, variant_keys: list[str]) -> bool:
    return any(key.startswith(scope) if scope.endswith(".") else key == scope for scope in variant_keys)


def _parse_variant(name: str, variant_overrides: list[str]) -> list[tuple[str, Any]]:
    try:
        return parse_overrides(variant_overrides)
    except ConfigError as err:
        raise ConfigError(f"variants.{name}: {err}") from None


def trial_overrides(sweep: SweepConfig, params: dict[str, Any]) -> list[str]:
    """A trial's Tune parameters → dotted overrides of the base config: the variant's own list first, then the
    sampled values (the seed among them)."""
    variant = params.get(VARIANT_KEY)
    sampled = {k: v for k, v in params.items() if k != VARIANT_KEY}
    return [*(sweep.variants[variant] if variant is not None else []), *overrides_from_params(sampled)]


def to_tune_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, domain in sweep.search_space.items():
        if isinstance(domain, Choice):
            space[key] = tune.choice(domain.values)
        elif isinstance(domain, Grid):
            space[key] = tune.grid_search(domain.values)
        elif domain.type == "uniform":
            space[key] = tune.uniform(domain.low, domain.high)
        else:
            space[key] = tune.loguniform(domain.low, domain.high)
    # Tune's grid counts up the first axis (sorted by key) fastest: study.variant before training.seed, so
    # every variant's first seed runs before any second seed, and a study stopped early is still balanced.
    if sweep.variants:
        space[VARIANT_KEY] = tune.grid_search(list(sweep.variants))
    if sweep.seeds:
        space[SEED_KEY] = tune.grid_search(list(sweep.seeds))
    return space


def overrides_from_params(params: dict[str, Any]) -> list[str]:
    """Sampled values → dotted overrides (YAML-encoded so lists and strings survive)."""
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in params.items()]


def concurrent_trials(sweep: SweepConfig, cluster_cpus: float, cluster_gpus: float, use_gpu: bool) -> int:
    per_trial_cpus = sweep.trial.trial_cpus + sweep.trial.num_workers * sweep.trial.cpus_per_worker
    fit = math.floor(cluster_cpus / per_trial_cpus + 1e-9)
    if use_gpu:
        fit = min(fit, math.floor(cluster_gpus / sweep.trial.num_workers))
    fit = max(fit, 1)
    return min(fit, sweep.max_concurrent_trials) if sweep.max_concurrent_trials else fit
