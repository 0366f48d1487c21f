"""Typed, validated configuration: YAML file + dotted ``key.sub=value`` overrides → frozen models.

Defaults live only here. Every model forbids unknown keys, so a typo stops the run before any work with a
message naming the dotted key. The same spelling is used end to end: config key = field = MLflow param.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A user error in the configuration; the message starts with the dotted key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------------- data
class ViewConfig(_Strict):
    """Augmentations of one view (SimCLR / VICReg / BYOL recipe). Probabilities are per image."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = Field(0.5, ge=0, le=1)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    blur_prob: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = Field(0.0, ge=0, le=1)
    solarize_threshold: int = Field(128, ge=0, le=256)

    @model_validator(mode="after")
    def _ranges(self) -> "ViewConfig":
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale: must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio: must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma: must satisfy 0 < min <= max, got {self.blur_sigma}")
        return self


class DataConfig(_Strict):
    """Where the .beton files are and how views are made from them."""

    source: str = "fashion_mnist"  # what `prepare` writes when the .beton files are absent
    train_path: Path = Path("data/fashion_mnist_train.beton")
    # None: no labelled test set (e.g. a folder of your own images); evaluation is then label-free.
    test_path: Path | None = Path("data/fashion_mnist_test.beton")
    image_size: int = Field(32, ge=8)
    num_loader_workers: int = Field(2, ge=1)
    subset: int | None = Field(None, ge=1)  # use only the first N training images (sweeps, tests)
    # Write the training file (when absent, from a built-in source) as a long-tailed subset: class c keeps
    # n_max * R^(-c/(C-1)) images (`python -m adadim_dist.data write --imbalance-ratio R` does the same).
    train_imbalance_ratio: float | None = Field(None, ge=1)
    # Model selection without the test set: with K, train_path is written with the source's training images but
    # the last K, and test_path with those last K (a validation split; both files are new, never the test set).
    validation_size: int | None = Field(None, ge=1)
    cache_dir: Path | None = None  # copy .beton files to node-local disk before opening them
    # Fashion-MNIST padded to 32×32 (what `prepare` writes); other datasets set their own in their configs.
    mean: tuple[float, float, float] = (0.2190, 0.2190, 0.2190)
    std: tuple[float, float, float] = (0.3318, 0.3318, 0.3318)
    view_a: ViewConfig = ViewConfig()
    view_b: ViewConfig = ViewConfig(solarize_prob=0.2)

    @model_validator(mode="after")
    def _validation_split_is_labelled_and_plain(self) -> "DataConfig":
        if self.validation_size is not None:
            if self.test_path is None:
                raise ValueError("validation_size: needs data.test_path (the held-out images are written there)")
            if self.train_imbalance_ratio is not None:
                raise ValueError("validation_size: cannot be combined with data.train_imbalance_ratio")
        return self


# ------------------------------------------------------------------------------------------------ objective
class AlphaConfig(_Strict):
    """How α_t (the weight of the sample-contrastive term) is set."""

    mode: Literal["adaptive", "fixed", "linear", "cosine"] = "adaptive"
    value: float = Field(0.5, ge=0, le=1)  # the constant for mode=fixed
    start: float = Field(0.0, ge=0, le=1)  # ramp endpoints for linear / cosine
    end: float = Field(1.0, ge=0, le=1)
    interval: int = Field(1, ge=1)  # adaptive: recompute every `interval` steps
    ema: float = Field(0.0, ge=0, lt=1)  # adaptive: α ← ema·α + (1−ema)·α_new; 0 = no smoothing
    # adaptive: how erank(Z) becomes α. min_n_d: erank / min(N, D) (the definition). running_max: erank / its
    # highest value so far. warmup_minmax: 0 for the first `window` of training while erank's min and max are
    # recorded, then (erank − min) / (max − min), clipped to [0, 1] (objectives/adadim.py: normalised_alpha).
    normalise: Literal["min_n_d", "running_max", "warmup_minmax"] = "min_n_d"
    window: float = Field(0.2, gt=0, lt=1)  # warmup_minmax: fraction of the training steps

    @model_validator(mode="after")
    def _normalise_is_adaptive(self) -> "AlphaConfig":
        if self.normalise != "min_n_d" and self.mode != "adaptive":
            raise ValueError(f"normalise: {self.normalise} applies to mode=adaptive only, got mode={self.mode}")
        return self


class ObjectiveConfig(_Strict):
    dim_loss: Literal["vicreg", "barlow_twins"] = "vicreg"
    invariance_weight: float = Field(25.0, ge=0)  # λ
    variance_weight: float = Field(25.0, ge=0)  # μ
    covariance_weight: float = Field(1.0, ge=0)  # ν
    barlow_lambda: float = Field(5e-3, ge=0)
    temperature: float = Field(0.2, gt=0)  # τ of NT-Xent
    gamma: float = Field(1.0, ge=0)  # β = γ·α
    mi_sign: Literal["maximize", "minimize", "off"] = "maximize"
    mi_order: float = Field(2.0, gt=0)
    kernel: Literal["cosine", "gaussian"] = "cosine"
    kernel_sigma: float | None = Field(None, gt=0)  # gaussian kernel width; None = median heuristic
    # How each worker computes the global-batch objective (same values and gradients either way).
    # sharded: its own rows against all-reduced sums and gathered columns, O(n·N·D + n·D² + D³) per worker;
    # MI terms with mi_order ≠ 2 or the median-heuristic gaussian width need the whole Gram matrix and stay
    # gathered. replicated: every worker computes the whole objective on the gathered batch, O(N²·D).
    compute: Literal["sharded", "replicated"] = "sharded"
    # none: the terms enter at their own scales (VICReg's is ~8x NT-Xent's here, so α is not the share it
    # names). running_mean: each term (L_dim, L_sample, I(R;Z)) is divided by a detached running mean (EMA with
    # balance_momentum) of its global value, so each enters at about unit scale.
    balance: Literal["none", "running_mean"] = "none"
    balance_momentum: float = Field(0.99, ge=0, lt=1)
    alpha: AlphaConfig = AlphaConfig()


# ---------------------------------------------------------------------------------------------------- model
class ModelConfig(_Strict):
    backbone: Literal["small_cnn", "resnet18", "resnet50"] = "small_cnn"
    small_cnn_width: int = Field(32, ge=4)  # channels of the first small_cnn block (later blocks: 2×, 4×, 8×)
    small_cnn_downsample: Literal["maxpool", "stride"] = "maxpool"  # how blocks 2–4 halve the resolution
    small_cnn_pool: int = Field(1, ge=1, le=4)  # representation = small_cnn_pool² average-pooled cells × 8·width
    cifar_stem: bool = True  # 3×3 stem without max-pool, for 28–64 px inputs
    projector_dims: tuple[int, ...] = (512, 512)
    num_classes: int = Field(10, ge=2)  # online linear probe
    # BatchNorm statistics over the global batch (SimCLR's global BN, VICReg's SyncBatchNorm): without it
    # each worker normalises with its own batch, and the gradients are not those of the whole batch.
    sync_batchnorm: bool = True


# ---------------------------------------------------------------------------------------------------- optim
class OptimConfig(_Strict):
    name: Literal["lars", "sgd", "adamw"] = "lars"
    lr: float = Field(0.3, gt=0)  # scaled by global_batch_size / 256
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    probe_lr: float = Field(0.1, gt=0)


class DeepSpeedConfig(_Strict):
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    bf16: bool = False  # refused: mixed precision under DeepSpeed is training.mixed_precision (see below)

    @model_validator(mode="after")
    def _no_bf16_weights(self) -> "DeepSpeedConfig":
        if self.bf16:
            raise ValueError(
                "bf16: DeepSpeed's bf16 mode casts BatchNorm weights but not its running statistics, which "
                "batch_norm refuses; use training.mixed_precision=true (bf16 autocast with fp32 weights, on GPUs)"
            )
        return self


class TrainingConfig(_Strict):
    epochs: int = Field(3, ge=1)  # the length of the learning-rate schedule (warm-up, cosine decay) and of training
    # Train only the first N epochs of that schedule, then evaluate: tuning trials that see the learning rates a
    # full-length run sees early on (a rate that diverges in epoch 2 of 15 does so in the trial too).
    stop_after_epochs: int | None = Field(None, ge=1)
    global_batch_size: int = Field(256, ge=2)
    num_workers: int = Field(2, ge=1)  # Ray Train workers
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    # "one_worker_per_node" (CPU-only jobs): at start, one worker on each node of the cluster, holding as many
    # CPUs as the node with the fewest has; num_workers and cpus_per_worker are then set from the cluster. On
    # CPUs one process using every core of a node is at least as fast as one per core: fewer collectives, none waiting
    # for a straggler (BENCHMARKS.md, "Service against a plain loop"). Without model.sync_batchnorm each
    # BatchNorm then normalises over a node's share of the batch, not a core's, which changes the model.
    # "auto": one_worker_per_node for a CPU-only job, as_given with use_gpu (one worker per GPU).
    layout: Literal["as_given", "one_worker_per_node", "auto"] = "as_given"
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # of the workers
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    mixed_precision: bool = True  # bf16 autocast on GPU (DDP and DeepSpeed); ignored on CPU
    channels_last: bool = True  # convolution-friendly layout of weights and images (DDP; DeepSpeed stays NCHW)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    seed: int = 0
    non_finite: Literal["stop", "skip"] = "stop"

    @model_validator(mode="after")
    def _stop_within_the_schedule(self) -> "TrainingConfig":
        if self.stop_after_epochs is not None and self.stop_after_epochs > self.epochs:
            raise ValueError(f"stop_after_epochs: {self.stop_after_epochs} is beyond training.epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _layout_is_for_cpus(self) -> "TrainingConfig":
        if self.layout == "one_worker_per_node" and self.use_gpu:
            raise ValueError("layout: one_worker_per_node is for CPU-only jobs; with use_gpu each worker holds one "
                             "GPU (training.num_workers)")
        return self

    @property
    def one_worker_per_node(self) -> bool:
        """Whether the workers are laid out from the cluster, one per node (``layout``)."""
        return self.layout == "one_worker_per_node" or (self.layout == "auto" and not self.use_gpu)

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainingConfig":
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"global_batch_size: {self.global_batch_size} is not divisible by num_workers ({self.num_workers})"
            )
        return self

    @property
    def trained_epochs(self) -> int:
        """How many epochs a job trains: ``stop_after_epochs`` if set, else ``epochs``."""
        return min(self.stop_after_epochs or self.epochs, self.epochs)

    @property
    def batch_size_per_worker(self) -> int:
        return self.global_batch_size // self.num_workers


class EvalConfig(_Strict):
    knn_k: tuple[Annotated[int, Field(ge=1)], ...] = Field((20, 200), min_length=1)  # the first is the headline
    bank_size: int | None = Field(None, ge=1)  # kNN bank: the first N training images (None = all)
    # The kNN bank's own labelled file (its first eval.bank_size images), e.g. a balanced set for a model trained
    # on a long-tailed one; None: the training file.
    bank_path: Path | None = None
    # Also each class's kNN top-1 (first k) on the test set: knn_class/top1_k<k>_c<class>.
    per_class: bool = False
    knn_temperature: float = Field(0.07, gt=0)
    every_epochs: int = Field(1, ge=1)
    baselines: bool = False  # also report kNN of a random encoder and of raw pixels
    # Every rank embeds its part of the bank and of the test set and searches its part of the bank (false: rank 0
    # evaluates alone; kept for side-by-side measurement, benchmarks/job_phases.py --variants after,after_rank0_eval).
    split_across_ranks: bool = True

    @model_validator(mode="after")
    def _k_fits_the_bank(self) -> "EvalConfig":
        if self.bank_size is not None and max(self.knn_k) > self.bank_size:
            raise ValueError(f"knn_k: k={max(self.knn_k)} is larger than eval.bank_size={self.bank_size}")
        return self


class TrackingConfig(_Strict):
    uri: str | None = None  # None = sqlite file under run.storage_path
    experiment: str = "adadim"

    @model_validator(mode="after")
    def _no_password_in_a_server_uri(self) -> "TrackingConfig":
        # MLflow's HTTP client does not take credentials from the URI (it fails to connect), and a password in a
        # config ends up in files and logs: the server's credentials come from the environment.
        if self.uri and re.match(r"^https?://[^/@\s]*:[^/@\s]*@", self.uri):
            raise ValueError("uri: an MLflow server's credentials go in MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD, not in the URI (give tracking.uri as http://HOST:PORT)")
        return self


class RunConfig(_Strict):
    name: str = "fmnist-smoke"
    storage_path: str = "runs"  # a local/NFS directory or a pyarrow URI such as s3://bucket/runs
    max_failures: int = Field(0, ge=-1)
    checkpoints_to_keep: int = Field(2, ge=1)
    ray_address: str | None = None  # None = RAY_ADDRESS or a new local instance
    dashboard_host: str = "127.0.0.1"
    # Ray's dashboard for a local instance the job starts (a cluster's is the cluster's own): its processes cost
    # ~5 s of a 2-core machine's start-up (BENCHMARKS.md, "Start-up and tail"); true to watch the job in it.
    dashboard: bool = False
    # The workers' own output (Ray Train's reports, controller messages, every logged step) on the console; off,
    # the console shows the progress bar, a line per epoch and the summary, which names the log files.
    verbose: bool = False


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


class Config(_Strict):
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _lars_sees_whole_tensors(self) -> "Config":
        stage = self.training.deepspeed.zero_stage
        if self.optim.name == "lars" and self.training.strategy == "deepspeed" and stage > 0:
            raise ValueError(
                f"optim.name: lars cannot run with training.strategy=deepspeed and training.deepspeed.zero_stage="
                f"{stage} (ZeRO hands the optimizer flat 1-D shards, so the per-tensor trust ratio and weight decay "
                "would silently be skipped); use training.strategy=ddp, training.deepspeed.zero_stage=0, or "
                "optim.name=sgd or adamw"
            )
        return self


# ------------------------------------------------------------------------------------------------- loading
def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``a.b=value`` strings → (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{item}: an override must look like section.key=value")
        pairs.append((key, yaml.safe_load(raw) if raw else None))
    return pairs


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a discriminated union's `type` field
        field = first["ctx"]["discriminator"].strip("'")
        expected = first["ctx"].get("expected_tags", "")
        got = f", got {first['ctx']['tag']!r}" if "tag" in first["ctx"] else ", got none"
        return f"{key}.{field}: must be one of {expected}{got}" if expected else f"{key}.{field}: required"
    if first["type"] == "missing":
        return f"{key}: required"
    msg = first["msg"].removeprefix("Value error, ")
    if isinstance(first.get("input"), dict):  # a cross-field rule: its message starts with the field name
        return f"{key}.{msg}" if key != "config" else msg
    if "input" in first and first["type"] != "missing":
        return f"{key}: {msg} (got {first['input']!r})"
    return f"{key}: {msg}"


def config_from_dict(tree: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply dotted overrides, validate. Raises ConfigError naming the key. A file may
    name a ``base_config`` (a path relative to it): its own keys are laid over that file's, section by section."""
    tree = _config_tree(Path(path), "--config", ()) if path is not None else {}
    return config_with_overrides(tree, overrides or [])


def _config_tree(path: Path, key: str, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {path}")
    if path.resolve() in chain:
        raise ConfigError(f"{key}: {path} is its own base (a cycle of base_config)")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: {path} is not valid YAML ({err.__class__.__name__})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{key}: {path} must hold a mapping of sections")
    tree = loaded or {}
    base = tree.pop("base_config", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"base_config: must be a path relative to {path}, got {base!r}")
    return _laid_over(_config_tree(path.parent / base, "base_config", (*chain, path.resolve())), tree)


def _laid_over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s keys over ``base``'s, merging mappings key by key; any other value of ``top`` replaces."""
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _laid_over(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_with_overrides(tree: dict[str, Any], overrides: list[str]) -> Config:
    """A config tree (e.g. a dumped Config) with dotted overrides applied, validated."""
    tree = copy.deepcopy(tree)
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version, with keys added since filled in by their defaults (so they do
    not read as changes); as saved where it no longer validates."""
    try:
        return Config.model_validate(saved).model_dump(mode="json")
    except Exception:  # noqa: BLE001 - compared as it is
        return saved


# scheme://user:password@host -> scheme://***@host; also ?password=... / &token=... in query strings.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|secret|access_key|api_key)=)[^&\s]+", re.I)


def mask_credentials(text: str) -> str:
    """``text`` with the credentials a URI can carry replaced by ``***``: safe to log, print or store."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", str(text)))


def storable(cfg: BaseModel | dict) -> dict[str, Any]:
    """The config as written to files (config.yaml, checkpoints): every string with the credentials a URI can
    carry masked (a database URI such as postgresql://user:pw@host/db), so no file a job writes holds them."""
    def masked(node):
        if isinstance(node, dict):
            return {key: masked(value) for key, value in node.items()}
        return mask_credentials(node) if isinstance(node, str) else node

    return masked(cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg)


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a config, for MLflow params."""
    tree = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
