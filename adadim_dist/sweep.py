"""Sweep definitions: a YAML file naming a base config, a search space over dotted config keys, the metric,
the scheduler and the per-trial resources. Validated like the training config (unknown keys refused)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import Config, ConfigError, _format_error, _set_dotted, load_config, parse_overrides

# What `metric` names, as reported by the worker each epoch. rankme = effective rank of R (label-free).
METRICS = {"knn": "knn_top1", "probe": "probe_top1", "rankme": "rankme"}


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
    search_space: dict[str, Domain] = Field(min_length=1)

    @property
    def metric_key(self) -> str:
        return METRICS[self.metric]


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
    return sweep, base


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
