"""The AdaDim controller: α modes, β = γ·α, the MI sign, state round-trip, bad arguments."""

import math
import subprocess
import sys

import pytest
import torch

from adadim_dist.objectives import (
    AdaDim,
    adadim_from_config,
    adaptive_alpha,
    effective_rank,
    information_terms,
    nt_xent_loss,
    scheduled_alpha,
    vicreg_terms,
)



def _batch(n=16, d_r=12, d_z=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    r_a, r_b = torch.randn(n, d_r, generator=g), torch.randn(n, d_r, generator=g)
    return r_a, r_b, torch.randn(n, d_z, generator=g), torch.randn(n, d_z, generator=g)


def test_adaptive_alpha_is_effective_rank_over_min_n_d():
    r_a, r_b, z_a, z_b = _batch()
    _, stats = AdaDim()(r_a, r_b, z_a, z_b)
    assert stats["adadim/alpha"] == pytest.approx(effective_rank(z_a).item() / 8)
    assert 0.0 <= stats["adadim/alpha"] <= 1.0


def test_adaptive_alpha_low_for_collapsed_embeddings():
    """A rank-1 projector output must push α towards 0 (decorrelation), a whitened one towards 1."""
    collapsed = torch.randn(32, 1) @ torch.randn(1, 16)
    whitened, _ = torch.linalg.qr(torch.randn(32, 16))
    assert adaptive_alpha(collapsed).item() == pytest.approx(1 / 16, rel=1e-3)
    assert adaptive_alpha(whitened).item() == pytest.approx(1.0, rel=1e-3)


def test_alpha_recomputed_only_every_interval_and_smoothed_by_ema():
    objective = AdaDim(alpha_interval=3, alpha_ema=0.5)
    alphas = []
    for step in range(7):
        r_a, r_b, z_a, z_b = _batch(seed=step)
        _, stats = objective(r_a, r_b, z_a, z_b, with_stats=False)
        alphas.append(stats["adadim/alpha"])
        objective.step()
    assert alphas[0] == alphas[1] == alphas[2]
    assert alphas[3] == alphas[4] == alphas[5] != alphas[2]
    fresh = adaptive_alpha(_batch(seed=3)[2]).item()
    assert alphas[3] == pytest.approx(0.5 * alphas[0] + 0.5 * fresh)


@pytest.mark.parametrize(
    "mode, progress, expected",
    [
        ("fixed", 0.7, 0.3),
        ("linear", 0.0, 0.1),
        ("linear", 0.5, 0.5),
        ("linear", 1.0, 0.9),
        ("cosine", 0.0, 0.1),
        ("cosine", 0.5, 0.5),
        ("cosine", 1.0, 0.9),
    ],
)
def test_scheduled_alpha_modes(mode, progress, expected):
    assert scheduled_alpha(mode, progress, value=0.3, start=0.1, end=0.9) == pytest.approx(expected)


def test_linear_mode_reaches_end_on_last_step():
    objective = AdaDim(alpha_mode="linear", alpha_start=0.0, alpha_end=1.0, total_steps=5)
    alphas = []
    for _ in range(5):
        alphas.append(objective(*_batch(), with_stats=False)[1]["adadim/alpha"])
        objective.step()
    assert alphas == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_loss_is_the_documented_mix_and_beta_is_gamma_alpha():
    """L = (1 − α)·L_dim + α·L_sample − s·β·I with β = γ·α, for each MI sign."""
    batch = _batch()
    values = {}
    for sign in ("maximize", "minimize", "off"):
        loss, stats = AdaDim(alpha_mode="fixed", alpha_value=0.3, gamma=2.0, mi_sign=sign)(*batch)
        assert stats["adadim/beta"] == pytest.approx(0.6)
        mix = 0.7 * stats["loss/dim"] + 0.3 * stats["loss/sample"]
        s = {"maximize": 1, "minimize": -1, "off": 0}[sign]
        assert loss.item() == pytest.approx(mix.item() - s * 0.6 * stats["info/mi_rz"].item())
        values[sign] = loss.item()
    assert values["maximize"] < values["off"] < values["minimize"]


def test_every_documented_statistic_is_reported():
    _, stats = AdaDim()(*_batch())
    for key in ["loss/total", "loss/dim", "loss/sample", "loss/invariance", "loss/variance", "loss/covariance",
                "adadim/alpha", "adadim/beta", "info/h_r", "info/mi_rz", "info/erank_r", "info/erank_z",
                "info/uniformity", "info/alignment"]:
        assert key in stats and math.isfinite(float(stats[key])), key


def test_barlow_twins_dim_loss_and_gradients_flow_to_encoder_outputs():
    r_a, r_b, z_a, z_b = (t.requires_grad_(True) for t in _batch())
    loss, _ = AdaDim(dim_loss="barlow_twins", mi_sign="maximize")(r_a, r_b, z_a, z_b)
    loss.backward()
    assert r_a.grad is not None and torch.isfinite(r_a.grad).all() and r_a.grad.abs().sum() > 0


def test_mi_off_sends_no_gradient_to_encoder_outputs():
    r_a, r_b, z_a, z_b = (t.requires_grad_(True) for t in _batch())
    loss, _ = AdaDim(mi_sign="off")(r_a, r_b, z_a, z_b)
    loss.backward()
    assert r_a.grad is None


def test_state_round_trip_restores_alpha_and_step():
    objective = AdaDim(alpha_interval=4, alpha_ema=0.9)
    for step in range(6):
        objective(*_batch(seed=step), with_stats=False)
        objective.step()
    restored = AdaDim(alpha_interval=4, alpha_ema=0.9)
    restored.load_state_dict(objective.state_dict())
    batch = _batch(seed=99)
    assert restored(*batch)[0].item() == objective(*batch)[0].item()
    assert restored.state_dict() == objective.state_dict()


def test_adadim_decreases_its_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    encoder = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU())
    projector = torch.nn.Linear(32, 16)
    params = list(encoder.parameters()) + list(projector.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    objective = AdaDim(alpha_mode="fixed", alpha_value=0.5)
    losses = []
    for _ in range(40):
        r_a, r_b = encoder(x + 0.2 * torch.randn_like(x)), encoder(x + 0.2 * torch.randn_like(x))
        loss, _ = objective(r_a, r_b, projector(r_a), projector(r_b), with_stats=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"alpha_mode": "step"}, "alpha_mode"),
        ({"dim_loss": "simsiam"}, "dim_loss"),
        ({"mi_sign": "up"}, "mi_sign"),
        ({"kernel": "rbf"}, "kernel"),
        ({"mi_order": 0}, "mi_order"),
        ({"alpha_ema": 1.0}, "alpha_ema"),
        ({"alpha_interval": 0}, "alpha_interval"),
        ({"compute": "gathered"}, "compute"),
        ({"gather": lambda x: x.clone()}, "all_reduce"),
        ({"rank": -1}, "rank"),
        ({"balance": "grad_norm"}, "balance"),
        ({"balance_momentum": 1.0}, "balance_momentum"),
        ({"balance": "running_mean", "compute": "replicated", "gather": lambda x: x.clone()}, "all_reduce"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        AdaDim(**kwargs)


def test_mismatched_batches_raise_value_error():
    r_a, r_b, z_a, z_b = _batch()
    with pytest.raises(ValueError, match="^z_a, z_b:"):
        AdaDim()(r_a, r_b, z_a, z_b[:-1])
    with pytest.raises(ValueError, match="^r_a, z_a:"):
        AdaDim()(r_a[:-1], r_b[:-1], z_a, z_b)


def test_objectives_import_no_ray_ffcv_mlflow_or_torch_distributed_collectives():
    """The objective is pure tensor maths: importing it must not pull in the orchestration stack."""
    code = ("import sys, adadim_dist.objectives; "
            "print(','.join(m for m in ('ray', 'ffcv', 'mlflow', 'deepspeed', 'adadim_dist.distributed') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_non_finite_embeddings_give_a_non_finite_loss_and_leave_alpha_state_alone():
    """After a skipped diverged step, α must still be the last finite estimate, not NaN for every later step."""
    objective = AdaDim(alpha_mode="adaptive", alpha_interval=1, alpha_ema=0.5)
    r_a, r_b, z_a, z_b = _batch()
    objective(r_a, r_b, z_a, z_b)
    objective.step()
    before = objective.state.alpha
    bad = z_a.clone()
    bad[0, 0] = float("nan")
    loss, stats = objective(r_a, r_b, bad, z_b)
    assert not torch.isfinite(loss) and objective.state.alpha == before and stats["adadim/alpha"] == before
    objective.step()
    _, stats = objective(r_a, r_b, z_a, z_b)
    assert math.isfinite(stats["adadim/alpha"])


def _loss_stats_and_grads(objective, batch):
    inputs = [t.clone().requires_grad_(True) for t in batch]
    loss, stats = objective(*inputs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return stats, torch.cat([torch.zeros(t.numel()) if g is None else g.reshape(-1) for g, t in zip(grads, inputs)])


@pytest.mark.parametrize("options", [
    {"dim_loss": "vicreg"},
    {"dim_loss": "barlow_twins", "mi_sign": "minimize"},
    {"kernel": "gaussian", "kernel_sigma": 0.7},
    {"kernel": "gaussian"},  # median width: MI stays on the gathered Gram matrices
    {"mi_order": 3.0},  # spectrum: MI stays on the gathered Gram matrices
    {"balance": "running_mean"},
], ids=["vicreg", "barlow_twins", "gaussian_fixed", "gaussian_median", "order3", "balanced"])
def test_sharded_and_replicated_forms_agree_on_one_process(options):
    """Every term, statistic and gradient of the two forms agree. With α fixed they are the same function
    (1e-9); the adaptive α and erank differ only by the replicated form's float32 SVD (1e-5)."""
    batch = _batch(n=16, d_z=24)  # D > N: the eigenvalue path must drop the d − N null directions
    fixed = {"alpha_mode": "fixed", "alpha_value": 0.37, **options}
    replicated, grads_replicated = _loss_stats_and_grads(AdaDim(compute="replicated", **fixed), batch)
    sharded, grads_sharded = _loss_stats_and_grads(AdaDim(compute="sharded", **fixed), batch)
    assert replicated.keys() == sharded.keys()
    for key in replicated:
        rel = 1e-5 if key.startswith("info/erank") else 1e-9
        assert float(sharded[key]) == pytest.approx(float(replicated[key]), rel=rel), key
    assert (grads_sharded - grads_replicated).norm() <= 1e-9 * grads_replicated.norm()

    adaptive_replicated, _ = _loss_stats_and_grads(AdaDim(compute="replicated", **options), batch)
    adaptive_sharded, _ = _loss_stats_and_grads(AdaDim(compute="sharded", **options), batch)
    assert adaptive_sharded["adadim/alpha"] == pytest.approx(adaptive_replicated["adadim/alpha"], rel=1e-5)


def test_mi_is_sharded_only_for_order_two_with_a_fixed_kernel_width():
    assert AdaDim().mi_is_sharded and AdaDim(kernel="gaussian", kernel_sigma=1.0).mi_is_sharded
    assert not AdaDim(kernel="gaussian").mi_is_sharded
    assert not AdaDim(mi_order=1.0).mi_is_sharded
    assert not AdaDim(compute="replicated").mi_is_sharded


def test_sharded_form_rejects_a_rank_that_does_not_match_the_gather():
    """A wrong rank would pair NT-Xent's positives with the wrong columns without any error."""
    r_a, r_b, z_a, z_b = _batch(n=8)

    def gather(local):  # this process is worker 0 of 2; worker 1 holds other rows
        return torch.cat([local, local.flip(0)])

    objective = AdaDim(gather=gather, all_reduce=lambda x: 2 * x, rank=1)
    with pytest.raises(ValueError, match="^rank:"):
        objective(r_a, r_b, z_a, z_b)
    AdaDim(gather=gather, all_reduce=lambda x: 2 * x, rank=0)(r_a, r_b, z_a, z_b)


def test_objective_under_bf16_autocast_is_the_float32_objective():
    """bf16 inputs inside a CPU bf16 autocast region give the α and I(R;Z) of the same inputs upcast to float32
    outside autocast: the objective upcasts and turns autocast off (its matmuls would otherwise run in bf16)."""
    batch_bf16 = [t.to(torch.bfloat16) for t in _batch(n=32, d_r=24, d_z=16)]
    for compute in ("sharded", "replicated"):
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            loss, stats = AdaDim(compute=compute)(*batch_bf16)
        reference_loss, reference = AdaDim(compute=compute)(*[t.float() for t in batch_bf16])
        assert loss.dtype == torch.float32 and stats["info/mi_rz"].dtype == torch.float32
        assert stats["adadim/alpha"] == reference["adadim/alpha"]
        assert torch.equal(stats["info/mi_rz"], reference["info/mi_rz"])
        assert torch.equal(loss, reference_loss)


@pytest.mark.parametrize("compute", ["sharded", "replicated"])
def test_adadim_from_config_passes_the_form_collectives_and_rank(compute):
    from adadim_dist.config import ObjectiveConfig

    def all_reduce(x):
        return x

    objective = adadim_from_config(ObjectiveConfig(compute=compute), total_steps=10, gather=torch.clone,
                                   all_reduce=all_reduce, rank=3)
    assert (objective.compute, objective.all_reduce, objective.rank) == (compute, all_reduce, 3)
    assert ObjectiveConfig().compute == "sharded"


# ------------------------------------------------------------------------------- α normalisation alternatives
def _rank_k_batch(k, n=32, d=16, seed=0):
    """A batch whose projector output of view a has k equal singular values: erank(Z_a) = k (to ~1e-4, the ε in
    p_k)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    z_a = (q[:, :k] @ torch.eye(d, dtype=torch.float64)[:k]).float()
    return torch.randn(n, 12, generator=g), torch.randn(n, 12, generator=g), z_a, torch.randn(n, d, generator=g)


def test_normalised_alpha_running_max_closed_form():
    from adadim_dist.objectives.adadim import normalised_alpha

    rank_max, alphas, maxima = None, [], []
    for rank in (4.0, 8.0, 6.0, 10.0, 5.0):
        alpha, _, rank_max = normalised_alpha(rank, "running_max", False, None, rank_max)
        alphas.append(alpha)
        maxima.append(rank_max)
    assert alphas == [1.0, 1.0, 0.75, 1.0, 0.5]
    assert maxima == [4.0, 8.0, 8.0, 10.0, 10.0]


def test_normalised_alpha_warmup_minmax_closed_form():
    from adadim_dist.objectives.adadim import normalised_alpha

    lo = hi = None
    for rank in (10.0, 6.0, 8.0):  # the window: decorrelation only, bounds recorded
        alpha, lo, hi = normalised_alpha(rank, "warmup_minmax", True, lo, hi)
        assert alpha == 0.0
    assert (lo, hi) == (6.0, 10.0)
    after = [normalised_alpha(rank, "warmup_minmax", False, lo, hi) for rank in (9.0, 6.0, 12.0, 3.0)]
    assert [a for a, _, _ in after] == [0.75, 0.0, 1.0, 0.0]
    assert all((l, h) == (6.0, 10.0) for _, l, h in after)  # bounds frozen after the window
    assert normalised_alpha(7.0, "warmup_minmax", False, 5.0, 5.0)[0] == 1.0  # a window of one rank
    assert normalised_alpha(5.0, "warmup_minmax", False, 5.0, 5.0)[0] == 0.0
    with pytest.raises(ValueError, match="^alpha_normalise:"):
        normalised_alpha(5.0, "min_max", False, None, None)


def test_warmup_minmax_alpha_is_zero_in_the_window_then_rises_with_the_rank():
    objective = AdaDim(alpha_normalise="warmup_minmax", alpha_window=0.3, total_steps=10)
    assert objective.alpha_window_steps == 3
    alphas = []
    for step, k in enumerate((8, 4, 6, 5, 7, 8)):
        alphas.append(objective(*_rank_k_batch(k, seed=step), with_stats=False)[1]["adadim/alpha"])
        objective.step()
    assert alphas[:3] == [0.0, 0.0, 0.0]
    assert alphas[3:] == pytest.approx([0.25, 0.75, 1.0], abs=1e-4)  # (k − 4) / (8 − 4)
    assert objective.state.rank_min == pytest.approx(4.0, rel=1e-4)
    assert objective.state.rank_max == pytest.approx(8.0, rel=1e-4)


@pytest.mark.parametrize("compute", ["sharded", "replicated"])
def test_running_max_alpha_against_the_rank_history(compute):
    objective = AdaDim(alpha_normalise="running_max", compute=compute)
    alphas = []
    for step, k in enumerate((4, 8, 6)):
        alphas.append(objective(*_rank_k_batch(k, seed=step), with_stats=False)[1]["adadim/alpha"])
        objective.step()
    assert alphas == pytest.approx([1.0, 1.0, 0.75], abs=1e-4)
    # The default normalisation on the same batch: erank / min(N, D) = 6 / 16.
    assert AdaDim(compute=compute)(*_rank_k_batch(6))[1]["adadim/alpha"] == pytest.approx(6 / 16, rel=1e-4)


def test_rank_history_comes_from_the_synced_rank():
    """Every worker derives α and the history from the rank ``sync`` returns (rank 0's), not its own estimate,
    so they stay bit-identical."""
    rank0 = torch.tensor(6.5, dtype=torch.float64)
    objective = AdaDim(alpha_normalise="warmup_minmax", alpha_window=0.5, total_steps=4, sync=lambda t: rank0)
    objective(*_rank_k_batch(3))
    assert (objective.state.rank_min, objective.state.rank_max) == (6.5, 6.5)


def test_rank_history_survives_a_state_round_trip_and_old_checkpoints_load():
    objective = AdaDim(alpha_normalise="warmup_minmax", alpha_window=0.5, total_steps=6, alpha_ema=0.5)
    for step, k in enumerate((8, 4, 6, 7)):
        objective(*_rank_k_batch(k, seed=step), with_stats=False)
        objective.step()
    saved = objective.state_dict()
    assert saved["rank_min"] == pytest.approx(4.0, rel=1e-4) and saved["rank_max"] == pytest.approx(8.0, rel=1e-4)
    restored = AdaDim(alpha_normalise="warmup_minmax", alpha_window=0.5, total_steps=6, alpha_ema=0.5)
    restored.load_state_dict(saved)
    batch = _rank_k_batch(5, seed=9)
    assert restored(*batch)[1]["adadim/alpha"] == objective(*batch)[1]["adadim/alpha"]
    assert restored.state_dict() == objective.state_dict()

    legacy = AdaDim()
    legacy.load_state_dict({"step": 12, "alpha": 0.3})  # written before the rank history existed
    state = legacy.state
    assert (state.step, state.alpha, state.rank_min, state.rank_max) == (12, 0.3, None, None)


def test_alpha_normalisation_config_is_validated_and_passed_through():
    from adadim_dist.config import ConfigError, ObjectiveConfig, load_config

    cfg = load_config(None, ["objective.alpha.normalise=warmup_minmax", "objective.alpha.window=0.25"])
    objective = adadim_from_config(cfg.objective, total_steps=40)
    assert (objective.alpha_normalise, objective.alpha_window_steps) == ("warmup_minmax", 10)
    assert ObjectiveConfig().alpha.normalise == "min_n_d"
    with pytest.raises(ConfigError, match=r"^objective\.alpha\.normalise: running_max applies to mode=adaptive"):
        load_config(None, ["objective.alpha.mode=fixed", "objective.alpha.normalise=running_max"])
    with pytest.raises(ConfigError, match=r"^objective\.alpha\.window"):
        load_config(None, ["objective.alpha.window=1.0"])
    with pytest.raises(ValueError, match="^alpha_window:"):
        AdaDim(alpha_window=0.0)


# ------------------------------------------------------------------------------------------------ balance
def _requiring_grad(batch):
    return [t.clone().requires_grad_(True) for t in batch]


@pytest.mark.parametrize("compute", ["sharded", "replicated"])
def test_balanced_terms_enter_at_unit_scale_so_alpha_and_beta_are_their_weights(compute):
    """On the first step each running mean is the term's own value: the loss is (1 − α) + α − β exactly, and the
    logged scales are the unbalanced terms."""
    batch = _requiring_grad(_batch())
    options = {"alpha_mode": "fixed", "alpha_value": 0.3, "gamma": 0.5, "compute": compute}
    loss, stats = AdaDim(balance="running_mean", **options)(*batch)
    _, raw = AdaDim(**options)(*batch)
    assert loss.item() == pytest.approx(0.7 + 0.3 - 0.15, rel=1e-6)
    assert stats["objective/scale_dim"] == pytest.approx(raw["loss/dim"].item(), rel=1e-6)
    assert stats["objective/scale_sample"] == pytest.approx(raw["loss/sample"].item(), rel=1e-6)
    assert stats["objective/scale_mi"] == pytest.approx(raw["info/mi_rz"].item(), rel=1e-6)


def test_balance_scales_are_a_running_mean_kept_in_the_state_and_frozen_outside_training():
    objective = AdaDim(alpha_mode="fixed", alpha_value=0.5, balance="running_mean", balance_momentum=0.75)
    first, second = _batch(seed=0), _batch(seed=1)
    _, stats0 = objective(*_requiring_grad(first))
    objective.step()
    _, raw1 = AdaDim(alpha_mode="fixed", alpha_value=0.5)(*second)
    _, stats1 = objective(*_requiring_grad(second))
    assert stats1["objective/scale_dim"] == pytest.approx(
        0.75 * stats0["objective/scale_dim"] + 0.25 * raw1["loss/dim"].item(), rel=1e-6)
    assert stats1["objective/scale_sample"] == pytest.approx(
        0.75 * stats0["objective/scale_sample"] + 0.25 * raw1["loss/sample"].item(), rel=1e-6)
    saved = objective.state_dict()
    with torch.no_grad():  # evaluation / a diagnostic re-run must not move the scales
        objective(*_batch(seed=2))
    assert objective.state_dict() == saved
    restored = AdaDim(alpha_mode="fixed", alpha_value=0.5, balance="running_mean")
    restored.load_state_dict(saved)
    assert restored.state.term_scales == saved["term_scales"]
    old = {k: v for k, v in saved.items() if k != "term_scales"}  # a checkpoint from before balancing
    restored.load_state_dict(old)
    assert restored.state.term_scales is None


def test_balance_off_leaves_the_loss_bit_identical_to_the_definition():
    batch = _batch()
    loss, stats = AdaDim(alpha_mode="fixed", alpha_value=0.3)(*batch)
    expected = 0.7 * stats["loss/dim"] + 0.3 * stats["loss/sample"] - 0.3 * stats["info/mi_rz"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not any(key.startswith("objective/scale") for key in stats)


@pytest.mark.parametrize("compute", ["sharded", "replicated"])
def test_gradient_shares_are_each_terms_gradient_norm_with_respect_to_z(compute):
    """Closed check against autograd on each weighted term separately; shares sum to 1, and a term with
    zero weight has share 0."""
    r_a, r_b, z_a, z_b = _requiring_grad(_batch())
    options = {"alpha_mode": "fixed", "alpha_value": 0.4, "gamma": 2.0, "compute": compute}
    _, stats = AdaDim(**options)(r_a, r_b, z_a, z_b)

    def norm_of(weighted_term):  # the terms again, on one process: total = 0.6·L_dim + 0.4·L_sample − 0.8·I
        grads = torch.autograd.grad(weighted_term, (z_a, z_b))
        return math.sqrt(sum(g.pow(2).sum().item() for g in grads))

    dim = vicreg_terms(z_a, z_b, z_a, z_b)
    mutual_info = 0.5 * (information_terms(r_a, z_a)["mi"] + information_terms(r_b, z_b)["mi"])
    norms = [norm_of(0.6 * (25.0 * dim["invariance"] + 25.0 * dim["variance"] + dim["covariance"])),
             norm_of(0.4 * nt_xent_loss(z_a, z_b, 0.2)), norm_of(0.8 * mutual_info)]
    for name, norm in zip(("dim", "sample", "mi"), norms):
        assert stats[f"objective/grad_share_{name}"] == pytest.approx(norm / sum(norms), rel=1e-5), name
    vicreg_only = AdaDim(alpha_mode="fixed", alpha_value=0.0, mi_sign="off", compute=compute)
    _, stats = vicreg_only(r_a, r_b, z_a, z_b)
    assert (stats["objective/grad_share_dim"], stats["objective/grad_share_sample"],
            stats["objective/grad_share_mi"]) == (1.0, 0.0, 0.0)
    _, stats = vicreg_only(r_a.detach(), r_b.detach(), z_a.detach(), z_b.detach())
    assert not any(key.startswith("objective/grad_share") for key in stats)  # no graph: nothing to measure



@pytest.mark.parametrize("compute", ["sharded", "replicated"])
def test_one_gather_a_step_carries_both_views_of_z_and_r(compute):
    """A CPU step's small collectives cost their latency (BENCHMARKS.md, "Service against a plain loop"): Z and R of
    both views travel in one gather, R only when the MI term or the statistics may read it."""
    r_a, r_b, z_a, z_b = (t.requires_grad_() for t in _batch(n=8, d_r=12, d_z=8))
    widths = []

    def gather(local):  # worker 0 of 2; worker 1 holds other rows
        widths.append(local.shape[1])
        return torch.cat([local, local.flip(0)])

    for mi_sign, with_stats, gathered in (("maximize", False, 8 + 8 + 12 + 12), ("off", False, 8 + 8),
                                          ("off", True, 8 + 8 + 12 + 12)):
        widths.clear()
        objective = AdaDim(gather=gather, all_reduce=lambda x: 2 * x, rank=0, compute=compute, mi_sign=mi_sign)
        loss, _ = objective(r_a, r_b, z_a, z_b, with_stats=with_stats)
        loss.backward()
        assert widths == [gathered], (mi_sign, with_stats)


@pytest.mark.parametrize("dim_loss", ["vicreg", "barlow_twins"])
def test_sharded_step_reduces_all_its_sums_in_one_all_reduce(dim_loss):
    """Besides the gather, a training step of the sharded form makes one all-reduce (the dimension loss's sums
    and the entropies' sums together; the means come from the gathered rows) and α's sync, and its loss is the
    replicated form's. Z is wider than the batch, so α's erank comes from the gathered rows' N×N Gram matrix
    (the D×D one would take a collective of its own), and VICReg's covariance and Barlow Twins' cross-correlation
    come from row-Gram blocks (2·D + 2 and D + 1 numbers instead of 2·D + 2·D² and 2·D + D²)."""
    r_a, r_b, z_a, z_b = (t.requires_grad_() for t in _batch(n=8, d_r=12, d_z=16))
    reduced_sizes, syncs = [], []

    def all_reduce(x):
        reduced_sizes.append(x.numel())
        return x

    def sync(x):
        syncs.append(x)
        return x

    sharded = AdaDim(gather=lambda x: x, all_reduce=all_reduce, sync=sync, compute="sharded", dim_loss=dim_loss)
    loss, _ = sharded(r_a, r_b, z_a, z_b, with_stats=False)
    d = z_a.shape[1]
    dim_sums = 2 * d + 2 if dim_loss == "vicreg" else d + 1
    assert reduced_sizes == [dim_sums + 2 * 6] and len(syncs) == 1
    replicated = AdaDim(compute="replicated", dim_loss=dim_loss)
    expected, _ = replicated(r_a, r_b, z_a, z_b, with_stats=False)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
