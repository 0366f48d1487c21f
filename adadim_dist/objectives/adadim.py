"""The AdaDim objective: L = (1 − α)·L_dim + α·L_sample − s·β·I(R; Z), with β = γ·α.

α_t follows the effective rank of the global projector output (mode ``adaptive``) or a schedule (``fixed``,
``linear``, ``cosine``). The adaptive mode divides erank(Z) by min(N, D) (``min_n_d``, the definition) or
normalises it by its own history (``running_max``, ``warmup_minmax``: ``normalised_alpha``). The module
knows nothing about processes: the caller injects ``gather`` (an autograd-aware all-gather, identity on one
process), ``all_reduce`` (an autograd-aware sum over workers, identity on one process), ``sync`` (makes a
tensor bit-identical on every worker, e.g. a broadcast from rank 0) and its ``rank``. See SPEC §2 for the
definition and the choices it leaves open.

Two forms compute the same global-batch objective (values and gradients):

- ``replicated``: every worker gathers R and Z and computes the whole objective, O(N²·D) per worker.
- ``sharded`` (default): every worker computes its own rows' part, O(n·N·D + n·D² + D³) per worker: NT-Xent
  on its rows against the gathered columns, the D×D statistics (VICReg, Barlow Twins, ZᵀZ for α and erank)
  from all-reduced sums, the order-2 entropies from all-reduced sums over its rows' Gram block. A step makes
  one gather (Z and R of both views), one all-reduce (the D×D and entropy sums together, centred on means
  taken from the gathered rows) and α's sync, each with one collective in the backward. α and erank
  use the N×N ZZᵀ of the gathered rows instead of ZᵀZ while N is small enough for that to be cheaper.
  Rényi orders other than 2, and the Gaussian kernel with the median-heuristic width, need the whole Gram
  matrix: their MI terms keep the gathered computation.

Balance (``balance``): VICReg's value is about 8× NT-Xent's on this project's runs, so with ``none`` (the
definition) α is not the share of the loss it names. ``running_mean`` divides each term (L_dim, L_sample and
I(R;Z)) by a detached running mean of its own global value (an EMA over steps, all-reduced over workers, then
synced), so every term enters at about unit scale and α, β are the weights they name.

Every logging step also records each term's share of the gradient that reaches Z:
``objective/grad_share_{dim,sample,mi}`` = ‖∂(weighted term)/∂Z‖ / Σ of the three norms (both views, the whole
global batch), from a backward pass through the objective alone.

The objective always runs in float32 or wider: bf16/fp16 inputs are upcast and autocast is off inside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .information import (
    KERNELS,
    alignment,
    alignment_sharded,
    effective_rank,
    effective_rank_sharded,
    information_terms,
    renyi2_information_terms,
    renyi2_local_sums,
    uniformity,
    uniformity_sharded,
)
from .losses import (
    all_reduce_together,
    barlow_twins_local_sums,
    barlow_twins_loss,
    barlow_twins_loss_from_sums,
    nt_xent_loss,
    nt_xent_loss_sharded,
    vicreg_local_sums,
    vicreg_terms,
    vicreg_terms_from_sums,
)

ALPHA_MODES = ("adaptive", "fixed", "linear", "cosine")
# How the adaptive mode turns erank(Z) into α (see ``normalised_alpha``).
ALPHA_NORMALISATIONS = ("min_n_d", "running_max", "warmup_minmax")
COMPUTE_FORMS = ("sharded", "replicated")
DIM_LOSSES = ("vicreg", "barlow_twins")
MI_SIGNS = {"maximize": 1.0, "minimize": -1.0, "off": 0.0}
# How the terms' scales are balanced before α and β weight them (see the module docstring).
BALANCE_MODES = ("none", "running_mean")
TERM_NAMES = ("dim", "sample", "mi")

Collective = Callable[[torch.Tensor], torch.Tensor]
_SCALE_FLOOR = 1e-8  # a term whose running mean is ~0 (an MI driven to 0) is not blown up without bound


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 embeddings (autocast, DeepSpeed bf16) would put the logsumexp, the D×D sums and the log of the
    # Frobenius norms in 8–11 bits of mantissa; float64 (the tests) stays float64.
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x


@dataclass
class AlphaState:
    """What must survive a restart: the optimisation step, the current (possibly smoothed) α, and the erank(Z)
    history the ``running_max`` and ``warmup_minmax`` normalisations divide by."""

    step: int = 0
    alpha: float | None = None  # None until the first adaptive estimate
    rank_min: float | None = None  # warmup_minmax: lowest erank(Z) of the window
    rank_max: float | None = None  # running_max: highest erank(Z) so far; warmup_minmax: highest of the window
    # balance=running_mean: the running means of |L_dim|, |L_sample|, |I(R;Z)| (None until the first estimate)
    term_scales: list[float] | None = None

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.alpha = _optional_float(state["alpha"])
        # Checkpoints written before the rank history existed have neither key.
        self.rank_min = _optional_float(state.get("rank_min"))
        self.rank_max = _optional_float(state.get("rank_max"))
        scales = state.get("term_scales")  # absent in checkpoints written before balancing existed
        self.term_scales = None if scales is None else [float(v) for v in scales]


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def scheduled_alpha(mode: str, progress: float, value: float, start: float, end: float) -> float:
    """α of the non-adaptive modes at training progress ∈ [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    if mode == "fixed":
        return value
    if mode == "linear":
        return start + (end - start) * progress
    if mode == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"alpha_mode: must be one of {', '.join(ALPHA_MODES)}, got {mode!r}")


def adaptive_alpha(z_global: torch.Tensor) -> torch.Tensor:
    """clip(erank(Z) / min(N, D), 0, 1), without gradient."""
    n, d = z_global.shape
    return (_erank_no_grad(z_global) / min(n, d)).clamp(0.0, 1.0)


def _erank_no_grad(z_global: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return effective_rank(z_global.detach().float())


def normalised_alpha(
    rank: float, normalise: str, in_window: bool, rank_min: float | None, rank_max: float | None
) -> tuple[float, float | None, float | None]:
    """α from erank(Z) by a history-based normalisation → (α, new rank_min, new rank_max). Pure.

    ``running_max``: α = clip(erank / max_{s≤t} erank_s, 0, 1): the rank relative to the highest it has been,
    so α no longer shrinks with the batch size (erank ≤ N) but falls as Z is compressed below its peak.
    ``warmup_minmax``: during the window (``in_window``) α = 0 (decorrelation only) while erank's min and max
    are recorded; after it α = clip((erank − min_w) / (max_w − min_w), 0, 1), frozen window bounds: α rises
    from 0 to 1 as the rank climbs from the lowest to the highest it reached under decorrelation (a window
    whose range is 0 gives α = 1 above it and 0 otherwise).
    (``min_n_d``, the default, needs no history: ``AdaDim`` computes it from the tensor directly.)
    """
    if normalise == "running_max":
        rank_max = rank if rank_max is None else max(rank_max, rank)
        return min(max(rank / rank_max, 0.0), 1.0) if rank_max > 0 else 0.0, rank_min, rank_max
    if normalise == "warmup_minmax":
        if in_window or rank_min is None or rank_max is None:
            rank_min = rank if rank_min is None else min(rank_min, rank)
            rank_max = rank if rank_max is None else max(rank_max, rank)
            return 0.0, rank_min, rank_max
        spread = rank_max - rank_min
        if spread <= 0.0:
            return (1.0 if rank > rank_max else 0.0), rank_min, rank_max
        return min(max((rank - rank_min) / spread, 0.0), 1.0), rank_min, rank_max
    raise ValueError(f"alpha_normalise: must be one of {', '.join(ALPHA_NORMALISATIONS)}, got {normalise!r}")


class AdaDim:
    """Callable objective holding the α controller's state. ``step()`` advances it once per optimiser step."""

    def __init__(
        self,
        *,
        dim_loss: str = "vicreg",
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        barlow_lambda: float = 5e-3,
        temperature: float = 0.2,
        gamma: float = 1.0,
        mi_sign: str = "maximize",
        mi_order: float = 2.0,
        kernel: str = "cosine",
        kernel_sigma: float | None = None,
        alpha_mode: str = "adaptive",
        alpha_value: float = 0.5,
        alpha_start: float = 0.0,
        alpha_end: float = 1.0,
        alpha_interval: int = 1,
        alpha_ema: float = 0.0,
        alpha_normalise: str = "min_n_d",
        alpha_window: float = 0.2,
        balance: str = "none",
        balance_momentum: float = 0.99,
        total_steps: int = 1,
        compute: str = "sharded",
        gather: Collective = _identity,
        all_reduce: Collective = _identity,
        sync: Collective = _identity,
        rank: int = 0,
    ) -> None:
        if compute not in COMPUTE_FORMS:
            raise ValueError(f"compute: must be one of {', '.join(COMPUTE_FORMS)}, got {compute!r}")
        if compute == "sharded" and (gather is _identity) != (all_reduce is _identity):
            # A real gather with an identity all-reduce would silently compute the D×D statistics of the local
            # rows only.
            raise ValueError("all_reduce: the sharded form needs both gather and all_reduce, or neither")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank: must be an int >= 0, got {rank!r}")
        if dim_loss not in DIM_LOSSES:
            raise ValueError(f"dim_loss: must be one of {', '.join(DIM_LOSSES)}, got {dim_loss!r}")
        if alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode: must be one of {', '.join(ALPHA_MODES)}, got {alpha_mode!r}")
        if mi_sign not in MI_SIGNS:
            raise ValueError(f"mi_sign: must be one of {', '.join(MI_SIGNS)}, got {mi_sign!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel: must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if not mi_order > 0:
            raise ValueError(f"mi_order: must be > 0, got {mi_order!r}")
        if not temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {temperature!r}")
        if alpha_interval < 1:
            raise ValueError(f"alpha_interval: must be >= 1, got {alpha_interval!r}")
        if not 0.0 <= alpha_ema < 1.0:
            raise ValueError(f"alpha_ema: must be in [0, 1), got {alpha_ema!r}")
        if alpha_normalise not in ALPHA_NORMALISATIONS:
            raise ValueError(f"alpha_normalise: must be one of {', '.join(ALPHA_NORMALISATIONS)}, "
                             f"got {alpha_normalise!r}")
        if not 0.0 < alpha_window < 1.0:
            raise ValueError(f"alpha_window: must be in (0, 1), got {alpha_window!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {total_steps!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance: must be one of {', '.join(BALANCE_MODES)}, got {balance!r}")
        if not 0.0 <= balance_momentum < 1.0:
            raise ValueError(f"balance_momentum: must be in [0, 1), got {balance_momentum!r}")
        if balance != "none" and (gather is _identity) != (all_reduce is _identity):
            # The scales must be global values: a per-worker scale would weight each worker's share differently.
            raise ValueError("all_reduce: balance needs both gather and all_reduce, or neither")
        self.dim_loss = dim_loss
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.barlow_lambda = barlow_lambda
        self.temperature = temperature
        self.gamma = gamma
        self.mi_sign = MI_SIGNS[mi_sign]
        self.mi_order = mi_order
        self.kernel = kernel
        self.kernel_sigma = kernel_sigma
        self.alpha_mode = alpha_mode
        self.alpha_value = alpha_value
        self.alpha_start = alpha_start
        self.alpha_end = alpha_end
        self.alpha_interval = alpha_interval
        self.alpha_ema = alpha_ema
        self.alpha_normalise = alpha_normalise
        self.alpha_window = alpha_window
        self.balance = balance
        self.balance_momentum = balance_momentum
        self.total_steps = total_steps
        self.compute = compute
        self.gather = gather
        self.all_reduce = all_reduce
        self.sync = sync
        self.rank = rank
        self.state = AlphaState()
        self._row_offset_checked = False

    @property
    def mi_is_sharded(self) -> bool:
        """Whether I(R;Z) is computed from row blocks (order 2, cosine or fixed-width Gaussian kernel)."""
        return (self.compute == "sharded" and self.mi_order == 2.0
                and (self.kernel == "cosine" or self.kernel_sigma is not None))

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.state.load_state_dict(state)

    def step(self) -> None:
        self.state.step += 1

    # ---------------------------------------------------------------------------------------------- alpha
    @property
    def alpha_window_steps(self) -> int:
        """warmup_minmax: the number of first steps over which erank(Z)'s min and max are recorded."""
        return max(1, round(self.alpha_window * self.total_steps))

    def _current_alpha(self, estimate_rank: Callable[[], torch.Tensor], rank_bound: int) -> float:
        """α of this step; ``estimate_rank`` (called only on steps that re-estimate, on every worker alike,
        since it may run collectives) gives erank(Z) of the global batch, ``rank_bound`` = min(N, D)."""
        if self.alpha_mode != "adaptive":
            progress = self.state.step / max(self.total_steps - 1, 1)
            return scheduled_alpha(self.alpha_mode, progress, self.alpha_value, self.alpha_start, self.alpha_end)
        if self.state.alpha is None or self.state.step % self.alpha_interval == 0:
            rank = estimate_rank()
            if self.alpha_normalise == "min_n_d":
                new = float(self.sync((rank / rank_bound).clamp(0.0, 1.0).to(torch.float64)))
            else:
                # The rank is synced first, so the history and α derived from it are bit-identical everywhere.
                new = float(self.sync(rank.to(torch.float64)))
            if not math.isfinite(new):
                # Diverged embeddings: this step's loss is non-finite anyway (the worker stops or skips the
                # step), and α's state must not carry the NaN into the steps after a skip.
                return new if self.state.alpha is None else self.state.alpha
            if self.alpha_normalise != "min_n_d":
                new, self.state.rank_min, self.state.rank_max = normalised_alpha(
                    new, self.alpha_normalise, self.state.step < self.alpha_window_steps,
                    self.state.rank_min, self.state.rank_max)
            if self.state.alpha is not None and self.alpha_ema > 0:
                new = self.alpha_ema * self.state.alpha + (1.0 - self.alpha_ema) * new
            self.state.alpha = new
        return self.state.alpha

    # ------------------------------------------------------------------------------------------- objective
    def __call__(
        self,
        r_a: torch.Tensor,
        r_b: torch.Tensor,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        with_stats: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Local encoder outputs r_* (n × d_r) and projector outputs z_* (n × D) of both views → (loss, stats).

        The loss is this worker's share: summed over workers' gradients and averaged as DDP does, it gives
        the gradient of the global-batch objective. ``stats`` holds α and β always, and with ``with_stats``
        every term and statistic as detached scalar tensors (the SVDs behind them are skipped otherwise,
        so callers ask for them only on logging steps). ``loss/*`` entries are this worker's share (average
        them over workers); ``info/*`` entries are global-batch values on every worker.
        """
        for name, t in (("r_a", r_a), ("r_b", r_b), ("z_a", z_a), ("z_b", z_b)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise ValueError(f"{name}: expected a 2-D (batch × dim) tensor")
        if r_a.shape != r_b.shape:
            raise ValueError(f"r_a, r_b: shapes differ ({tuple(r_a.shape)} vs {tuple(r_b.shape)})")
        if z_a.shape != z_b.shape:
            raise ValueError(f"z_a, z_b: shapes differ ({tuple(z_a.shape)} vs {tuple(z_b.shape)})")
        if r_a.shape[0] != z_a.shape[0]:
            raise ValueError(f"r_a, z_a: batch sizes differ ({r_a.shape[0]} vs {z_a.shape[0]})")

        # A caller under bf16 autocast still gets a float32 objective: upcast, and no op inside is autocast.
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            r_a, r_b, z_a, z_b = (_at_least_float32(t) for t in (r_a, r_b, z_a, z_b))
            # The gradient shares differentiate down to Z only. Engines hook their outputs (DeepSpeed refuses any
            # backward but its own there), so they stop at these aliases, one step short of the engine's tensors.
            z_a, z_b = (t.view_as(t) if t.requires_grad else t for t in (z_a, z_b))
            if self.compute == "sharded":
                return self._sharded(r_a, r_b, z_a, z_b, with_stats)
            return self._replicated(r_a, r_b, z_a, z_b, with_stats)

    def _gather_embeddings(self, r_a, r_b, z_a, z_b, with_stats: bool):
        """(Z_a, Z_b, R_a, R_b) of the global batch, in one gather (and one collective in the backward): the
        views side by side along the features, split after. R is gathered only where the MI term or the
        statistics may use it (None otherwise). Small collectives cost their latency, not their size: ten of
        them took a fifth of a CPU step (BENCHMARKS.md, "Service against a plain loop")."""
        wants_r = (self.mi_sign != 0.0 and self.gamma != 0.0) or with_stats
        local = [z_a, z_b, r_a, r_b] if wants_r else [z_a, z_b]
        if self.gather is _identity:
            parts = local
        elif len({t.dtype for t in local}) > 1:  # concatenating would promote one of them
            parts = [self.gather(t) for t in local]
        else:
            gathered = self.gather(torch.cat(local, dim=1))
            parts = [part.contiguous() for part in gathered.split([t.shape[1] for t in local], dim=1)]
        return tuple(parts) if wants_r else (*parts, None, None)

    def _weighted_vicreg(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.invariance_weight * terms["invariance"] + self.variance_weight * terms["variance"]
                + self.covariance_weight * terms["covariance"])

    def _replicated(self, r_a, r_b, z_a, z_b, with_stats):
        """Every worker computes the whole objective on the gathered batch."""
        z_a_global, z_b_global, r_a_global, r_b_global = self._gather_embeddings(r_a, r_b, z_a, z_b, with_stats)
        alpha = self._current_alpha(lambda: _erank_no_grad(z_a_global), min(z_a_global.shape))
        beta = self.gamma * alpha
        if self.dim_loss == "vicreg":
            terms = vicreg_terms(z_a, z_b, z_a_global, z_b_global)
            loss_dim = self._weighted_vicreg(terms)
        else:
            terms = {}
            loss_dim = barlow_twins_loss(z_a_global, z_b_global, self.barlow_lambda)
        loss_sample = nt_xent_loss(z_a_global, z_b_global, self.temperature)

        needs_mi_grad = self.mi_sign != 0.0 and beta != 0.0
        info_a = info_b = mutual_info = None
        if needs_mi_grad or with_stats:
            with torch.set_grad_enabled(needs_mi_grad and torch.is_grad_enabled()):
                info_a = information_terms(r_a_global, z_a_global, self.mi_order, self.kernel, self.kernel_sigma)
                info_b = information_terms(r_b_global, z_b_global, self.mi_order, self.kernel, self.kernel_sigma)
                mutual_info = 0.5 * (info_a["mi"] + info_b["mi"])
        loss, objective_stats = self._weighted_sum(loss_dim, loss_sample, mutual_info, alpha, beta, needs_mi_grad,
                                                   z_a, z_b, z_a_global.shape[0] // z_a.shape[0], with_stats)

        stats: dict[str, torch.Tensor | float] = {"adadim/alpha": alpha, "adadim/beta": beta, **objective_stats}
        if with_stats:
            with torch.no_grad():
                stats.update(
                    {
                        **_loss_and_information_stats(loss, loss_dim, loss_sample, terms, info_a, info_b),
                        "info/erank_r": effective_rank(r_a_global.detach().float()),
                        "info/erank_z": effective_rank(z_a_global.detach().float()),
                        "info/uniformity": uniformity(z_a_global.detach()),
                        "info/alignment": alignment(z_a_global.detach(), z_b_global.detach()),
                    }
                )
        return loss, stats

    def _sharded(self, r_a, r_b, z_a, z_b, with_stats):
        """Every worker computes its own rows' part of the objective; sums over workers go through
        ``all_reduce``, and the gathered batch serves only as the columns of NT-Xent and the Gram blocks."""
        z_a_global, z_b_global, r_a_global, r_b_global = self._gather_embeddings(r_a, r_b, z_a, z_b, with_stats)
        num_global, row_offset = z_a_global.shape[0], self.rank * z_a.shape[0]
        self._check_rank_rows(z_a, z_a_global, row_offset)
        step_erank_z: list[torch.Tensor] = []  # the α estimate's erank(Z), reused by this step's statistics

        def estimate_rank() -> torch.Tensor:
            step_erank_z.append(effective_rank_sharded(z_a, z_a_global, self.all_reduce))
            return step_erank_z[0]

        alpha = self._current_alpha(estimate_rank, min(num_global, z_a.shape[1]))
        beta = self.gamma * alpha
        # The global means come from the gathered rows (no collective; the gradient returns through the
        # gather's backward). The D×D sums and the entropies' sums then travel in one all-reduce.
        means = torch.stack([z_a_global, z_b_global]).mean(dim=1)
        if self.dim_loss == "vicreg":
            local_sums = [vicreg_local_sums(z_a, z_b, means, num_global, z_a_global, z_b_global)]
        else:
            local_sums = [barlow_twins_local_sums(z_a, z_b, means, z_a_global, z_b_global)]
        loss_sample = nt_xent_loss_sharded(z_a, z_b, z_a_global, z_b_global, row_offset, self.temperature)

        needs_mi_grad = self.mi_sign != 0.0 and beta != 0.0
        wants_info = needs_mi_grad or with_stats
        if wants_info and self.mi_is_sharded:
            with torch.set_grad_enabled(needs_mi_grad and torch.is_grad_enabled()):
                local_sums.append(renyi2_local_sums([(r_a, z_a, r_a_global, z_a_global),
                                                     (r_b, z_b, r_b_global, z_b_global)],
                                                    row_offset, self.kernel, self.kernel_sigma))
        reduced = all_reduce_together(self.all_reduce, local_sums)
        if self.dim_loss == "vicreg":
            terms = vicreg_terms_from_sums(z_a, z_b, reduced[0])
            loss_dim = self._weighted_vicreg(terms)
        else:
            terms = {}
            loss_dim = barlow_twins_loss_from_sums(reduced[0], z_a.shape[1], num_global, self.barlow_lambda)

        info_a = info_b = mutual_info = None
        if wants_info:
            with torch.set_grad_enabled(needs_mi_grad and torch.is_grad_enabled()):
                if self.mi_is_sharded:
                    info_a, info_b = (renyi2_information_terms(view_sums) for view_sums in reduced[1].unbind(0))
                else:
                    info_a = information_terms(r_a_global, z_a_global, self.mi_order, self.kernel,
                                               self.kernel_sigma)
                    info_b = information_terms(r_b_global, z_b_global, self.mi_order, self.kernel,
                                               self.kernel_sigma)
                mutual_info = 0.5 * (info_a["mi"] + info_b["mi"])
        loss, objective_stats = self._weighted_sum(loss_dim, loss_sample, mutual_info, alpha, beta, needs_mi_grad,
                                                   z_a, z_b, num_global // z_a.shape[0], with_stats)

        stats: dict[str, torch.Tensor | float] = {"adadim/alpha": alpha, "adadim/beta": beta, **objective_stats}
        if with_stats:
            with torch.no_grad():
                erank_z = step_erank_z[0] if step_erank_z else effective_rank_sharded(z_a, z_a_global,
                                                                                    self.all_reduce)
                stats.update(
                    {
                        **_loss_and_information_stats(loss, loss_dim, loss_sample, terms, info_a, info_b),
                        "info/erank_r": effective_rank_sharded(r_a, r_a_global, self.all_reduce),
                        "info/erank_z": erank_z,
                        "info/uniformity": uniformity_sharded(z_a.detach(), z_a_global.detach(), row_offset,
                                                              self.all_reduce),
                        "info/alignment": alignment_sharded(z_a.detach(), z_b.detach(), self.all_reduce,
                                                            num_global),
                    }
                )
        return loss, stats

    def _weighted_sum(self, loss_dim, loss_sample, mutual_info, alpha, beta, needs_mi_grad, z_a, z_b, world,
                      with_stats):
        """(1 − α)·L_dim/s_dim + α·L_sample/s_sample − sign·β·I/s_mi → (loss, objective/* stats); the scales
        s are 1 unless ``balance`` is on. ``world`` = the number of workers (global rows / local rows). With
        ``with_stats`` (and a graph to Z), each weighted term's gradient norm with respect to Z, as shares of
        their sum."""
        scale_dim, scale_sample, scale_mi = self._term_scales(
            (loss_dim, loss_sample, mutual_info if needs_mi_grad else None), world)
        weighted = [(1.0 - alpha) / scale_dim * loss_dim, alpha / scale_sample * loss_sample, None]
        if needs_mi_grad:
            weighted[2] = -self.mi_sign * beta / scale_mi * mutual_info
        loss = sum(term for term in weighted if term is not None)
        stats: dict[str, torch.Tensor | float] = {}
        if self.balance != "none":
            stats.update({"objective/scale_dim": scale_dim, "objective/scale_sample": scale_sample,
                          "objective/scale_mi": scale_mi})
        if with_stats and torch.is_grad_enabled() and z_a.requires_grad:
            shares = self._gradient_shares(weighted, (alpha != 1.0, alpha != 0.0, needs_mi_grad), z_a, z_b)
            stats.update({f"objective/grad_share_{name}": share for name, share in zip(TERM_NAMES, shares)})
        return loss, stats

    def _term_scales(self, values, world: int) -> tuple[float, float, float]:
        """balance=running_mean: the running means of the terms' global magnitudes, updated on training calls
        (grad enabled) with this step's values; a term not computed this step (None) keeps its mean. Every
        worker gets rank 0's values (``sync``), so the weights are bit-identical. 1.0 each without balance."""
        if self.balance == "none":
            return 1.0, 1.0, 1.0
        scales = list(self.state.term_scales or [None] * len(TERM_NAMES))
        if torch.is_grad_enabled():
            with torch.no_grad():
                reference = next(v for v in values if v is not None)
                local = torch.stack([(v if v is not None else torch.zeros_like(reference)).detach().double()
                                     for v in values])
                current = self.sync((self.all_reduce(local) / world).abs()).tolist()
            for index, (value, new) in enumerate(zip(values, current)):
                if value is None or not math.isfinite(new):
                    continue  # a diverged step must not carry its NaN into the scales
                old = scales[index]
                scales[index] = new if old is None else self.balance_momentum * old + (1 - self.balance_momentum) * new
            self.state.term_scales = scales
        return tuple(max(s, _SCALE_FLOOR) if s is not None else 1.0 for s in scales)

    def _gradient_shares(self, weighted, present, z_a, z_b) -> list[float]:
        """‖∂term/∂Z‖ over both views and the global batch, for each weighted term, divided by their sum.

        Every worker differentiates its own share through the collectives (which sum the workers' gradients),
        so every worker must take the same terms in the same order: ``present`` depends on α and β only,
        which are identical everywhere."""
        squares = []
        for term, is_present in zip(weighted, present):
            if term is None or not is_present:
                squares.append(torch.zeros((), dtype=torch.float64, device=z_a.device))
                continue
            grads = torch.autograd.grad(term, (z_a, z_b), retain_graph=True, allow_unused=True)
            squares.append(sum(g.double().pow(2).sum() for g in grads if g is not None)
                           + torch.zeros((), dtype=torch.float64, device=z_a.device))
        with torch.no_grad():
            norms = self.all_reduce(torch.stack(squares)).sqrt()
            total = norms.sum()
            return (norms / total).tolist() if total > 0 else [0.0] * len(norms)

    def _check_rank_rows(self, z_a: torch.Tensor, z_a_global: torch.Tensor, row_offset: int) -> None:
        """Once per objective: the local rows must sit where ``rank`` says in the gathered batch, or NT-Xent
        would pair the wrong positives and mask the wrong self-similarities without any error."""
        if self._row_offset_checked:
            return
        n, num_global = z_a.shape[0], z_a_global.shape[0]
        # nan_to_num: a diverged first step must not look like a wrong rank.
        if row_offset + n > num_global or not torch.equal(
            z_a_global[row_offset : row_offset + n].detach().nan_to_num(), z_a.detach().nan_to_num()
        ):
            raise ValueError(
                f"rank: the local rows are not rows {row_offset}–{row_offset + n - 1} of the gathered batch of "
                f"{num_global} (rank {self.rank} × local batch {n}); pass this process's rank in the group "
                "that gather uses"
            )
        self._row_offset_checked = True


def _loss_and_information_stats(loss, loss_dim, loss_sample, terms, info_a, info_b) -> dict[str, torch.Tensor]:
    """The logged terms both forms share: the loss and its parts, and I(R;Z), H(R), H(Z) averaged over views."""
    return {
        "loss/total": loss.detach(),
        "loss/dim": loss_dim.detach(),
        "loss/sample": loss_sample.detach(),
        **{f"loss/{k}": v.detach() for k, v in terms.items()},
        "info/mi_rz": 0.5 * (info_a["mi"] + info_b["mi"]).detach(),
        "info/h_r": 0.5 * (info_a["h_x"] + info_b["h_x"]).detach(),
        "info/h_z": 0.5 * (info_a["h_y"] + info_b["h_y"]).detach(),
    }


def adadim_from_config(objective_cfg, total_steps: int, gather: Collective = _identity,
                       all_reduce: Collective = _identity, sync: Collective = _identity, rank: int = 0) -> AdaDim:
    """Build AdaDim from an ``ObjectiveConfig``-shaped object (duck-typed: no config import here). The
    sharded form (``objective_cfg.compute``) needs ``all_reduce`` and this process's ``rank`` besides
    ``gather`` and ``sync``."""
    alpha = objective_cfg.alpha
    return AdaDim(
        dim_loss=objective_cfg.dim_loss,
        invariance_weight=objective_cfg.invariance_weight,
        variance_weight=objective_cfg.variance_weight,
        covariance_weight=objective_cfg.covariance_weight,
        barlow_lambda=objective_cfg.barlow_lambda,
        temperature=objective_cfg.temperature,
        gamma=objective_cfg.gamma,
        mi_sign=objective_cfg.mi_sign,
        mi_order=objective_cfg.mi_order,
        kernel=objective_cfg.kernel,
        kernel_sigma=objective_cfg.kernel_sigma,
        alpha_mode=alpha.mode,
        alpha_value=alpha.value,
        alpha_start=alpha.start,
        alpha_end=alpha.end,
        alpha_interval=alpha.interval,
        alpha_ema=alpha.ema,
        alpha_normalise=alpha.normalise,
        alpha_window=alpha.window,
        balance=objective_cfg.balance,
        balance_momentum=objective_cfg.balance_momentum,
        total_steps=total_steps,
        compute=objective_cfg.compute,
        gather=gather,
        all_reduce=all_reduce,
        sync=sync,
        rank=rank,
    )
