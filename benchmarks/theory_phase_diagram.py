"""The linear theory of collapse against training, over augmentation strength × weight decay (issue 16).

    python benchmarks/theory_phase_diagram.py [--steps 1500] [--out results/theory-phase]

Synthetic Gaussian data in d = 8 dimensions, every data variance a_i = 1; the two views add independent
Gaussian noise of variance b to coordinates 4-7 only (the "augmented" directions; 0-3 are never augmented),
as in Jing et al.'s strong-augmentation toy. For each b in B_GRID and each weight decay gamma in GAMMA_GRID, a
square linear encoder is trained (``adadim_dist.theory.synthetic.train_linear_encoder``, SGD, fresh views
every step, seed 0) with

* the theory's two losses, whose global minimum ``adadim_dist.theory.linear_ssl`` gives in closed form:
  spectral contrastive (P = 2A: survives iff 2a_i > gamma, whatever b) and alignment + variance
  (P = 2A - B: an augmented direction collapses iff b >= 2a - gamma);
* the project's objectives as the service builds them: VICReg, NT-Xent and AdaDim (as shipped).

A direction counts as collapsed when the encoder reads it with under 10 % of the strongest direction's
strength ``||W e_i||`` (``synthetic.COLLAPSE_RELATIVE``). Writes ``phase.json`` (every cell: measured and, for
the theory's losses, predicted strengths and collapsed directions) and ``phase_diagram.png``, and prints one
JSON line with the agreement counts.

    python benchmarks/theory_phase_diagram.py --fine

runs issue 31's checks instead (about 3 CPU-minutes; one thread): unnormalised InfoNCE against ½ × the spectral
landscape (Monte Carlo), the normalised NT-Xent's numerical landscape (augmented-block ratio r*, collapse
threshold b* against the high-temperature closed form), tail-class collapse under weight decay at imbalance ratio
10 (trained against predicted, and a linear probe per class), the square-root onset near a threshold (three
seeds), the rank-limited encoder, the bias, and a few-label probe as augmentation collapses nuisance directions.
Prints one JSON line with every number RESULTS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adadim_dist.theory import (  # noqa: E402
    alignment_variance_landscape,
    predict_stationary_solution,
    spectral_contrastive_landscape,
    spectral_contrastive_sample_loss,
)
from adadim_dist.theory.synthetic import (  # noqa: E402
    LEARNING_RATES,
    GaussianViews,
    alignment_variance_sample_loss,
    collapsed_directions,
    predicted_strengths,
    project_objective,
    train_linear_encoder,
)

try:
    from _common import emit
except ImportError:  # run as a module
    from benchmarks._common import emit

DIM, AUGMENTED = 8, range(4, 8)
B_GRID = [0.0, 1.0, 3.0]
GAMMA_GRID = [0.0, 0.5, 1.5, 2.5]
# Learning rates: synthetic.LEARNING_RATES (stable at b = 0, gamma = 0; not tuned per cell).
LOSSES = {
    "spectral contrastive (theory)": dict(lr=LEARNING_RATES["spectral"], landscape=spectral_contrastive_landscape,
                                          sample_loss=spectral_contrastive_sample_loss),
    "alignment + variance (theory)": dict(lr=LEARNING_RATES["alignment_variance"],
                                          landscape=alignment_variance_landscape,
                                          sample_loss=alignment_variance_sample_loss),
    "VICReg": dict(lr=LEARNING_RATES["vicreg"], objective="vicreg"),
    "NT-Xent": dict(lr=LEARNING_RATES["ntxent"], objective="ntxent"),
    "AdaDim": dict(lr=LEARNING_RATES["adadim"], objective="adadim"),
}


def views_for(augmentation_variance: float) -> GaussianViews:
    noise = tuple(augmentation_variance if i in AUGMENTED else 0.0 for i in range(DIM))
    return GaussianViews(data_variances=(1.0,) * DIM, augmentation_variances=noise)


def run_cell(name: str, spec: dict, augmentation_variance: float, weight_decay: float, steps: int) -> dict:
    views = views_for(augmentation_variance)
    if "landscape" in spec:
        sample_loss = spec["sample_loss"]
        landscape = spec["landscape"](views.data_covariance, views.augmentation_covariance, weight_decay)
        expected = predicted_strengths(predict_stationary_solution(landscape))
    else:
        sample_loss, expected = project_objective(spec["objective"], total_steps=steps), None
    trained = train_linear_encoder(sample_loss, views, weight_decay, steps=steps, lr=spec["lr"])
    cell = {
        "loss": name, "b": augmentation_variance, "gamma": weight_decay,
        "strengths": trained.strengths.round(4).tolist(), "collapsed": trained.collapsed.tolist(),
        "rank": trained.rank,
    }
    if expected is not None:
        predicted_collapse = collapsed_directions(expected)
        cell |= {"predicted_strengths": expected.round(4).tolist(), "predicted_collapsed": predicted_collapse.tolist(),
                 "predicted_rank": int((~predicted_collapse).sum()),
                 "agrees": bool((predicted_collapse == trained.collapsed).all())}
    else:  # which of the two solvable losses' collapse pattern the project's objective follows here
        for key, landscape in (("spectral", spectral_contrastive_landscape), ("alignment_variance",
                                                                             alignment_variance_landscape)):
            prediction = predict_stationary_solution(landscape(views.data_covariance, views.augmentation_covariance,
                                                               weight_decay))
            cell[f"follows_{key}"] = bool((collapsed_directions(predicted_strengths(prediction))
                                           == trained.collapsed).all())
    return cell


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(3.3 * len(LOSSES), 3.4), sharey=True)
    for ax, name in zip(axes, LOSSES):
        grid = np.full((len(B_GRID), len(GAMMA_GRID)), np.nan)
        for cell in (c for c in cells if c["loss"] == name):
            i, j = B_GRID.index(cell["b"]), GAMMA_GRID.index(cell["gamma"])
            grid[i, j] = cell["rank"]
            clean = sum(not c for k, c in enumerate(cell["collapsed"]) if k not in AUGMENTED)
            augmented = sum(not c for k, c in enumerate(cell["collapsed"]) if k in AUGMENTED)
            text = f"{clean}+{augmented}"
            if "predicted_collapsed" in cell:
                p_clean = sum(not c for k, c in enumerate(cell["predicted_collapsed"]) if k not in AUGMENTED)
                p_aug = sum(not c for k, c in enumerate(cell["predicted_collapsed"]) if k in AUGMENTED)
                text += f"\n(theory {p_clean}+{p_aug})"
                if not cell["agrees"]:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5)
        ax.imshow(grid, cmap="Greens", vmin=0, vmax=DIM, origin="lower", aspect="auto")
        ax.set_xticks(range(len(GAMMA_GRID)), [f"{g:g}" for g in GAMMA_GRID])
        ax.set_yticks(range(len(B_GRID)), [f"{b:g}" for b in B_GRID])
        ax.set_xlabel("weight decay γ")
        ax.set_title(name, fontsize=9)
    axes[0].set_ylabel("augmentation variance b (coords 4-7)")
    fig.suptitle("Surviving directions, clean + augmented (of 4 + 4); red: measured ≠ theory", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fine_checks() -> dict:
    """Issue 31's checks (module docstring); every training run is seed 0 unless a seed is named."""
    import torch

    from adadim_dist.theory import (
        class_mixture_view_covariances, infonce_landscape, landscape_loss, long_tail_class_priors,
        predict_with_bias, singular_value_near_threshold, surviving_class_directions, unnormalised_infonce_sample_loss,
    )
    from adadim_dist.theory.normalised import (
        collapse_threshold, high_temperature_collapse_threshold, landau_coefficients, landau_onset_ratio,
        optimal_block_ratio, two_block_views,
    )
    from adadim_dist.theory.synthetic import ClassMixtureViews, ridge_probe_accuracy

    torch.set_num_threads(1)
    out: dict = {}
    round_ = lambda values, digits=3: np.round(np.asarray(values, dtype=float), digits).tolist()  # noqa: E731

    # 1. Unnormalised InfoNCE = ½ spectral (Gaussian views, rotated A, 8 batches of 1,500 pairs).
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    data_cov, noise_cov = rotation @ np.diag([2.0, 1.0, 0.5]) @ rotation.T, np.diag([0.2, 0.6, 1.0])
    weight = 0.4 * np.random.default_rng(1).standard_normal((2, 3))
    estimates = []
    for _ in range(8):
        x = rng.standard_normal((1500, 3)) @ np.linalg.cholesky(data_cov).T
        views = [torch.from_numpy((x + rng.standard_normal(x.shape) @ np.sqrt(noise_cov)) @ weight.T) for _ in "ab"]
        estimates.append(float(unnormalised_infonce_sample_loss(*views)))
    out["infonce"] = {"monte_carlo": round(float(np.mean(estimates)), 4),
                      "standard_error": round(float(np.std(estimates, ddof=1) / np.sqrt(8)), 4),
                      "half_spectral": round(landscape_loss(weight, infonce_landscape(data_cov, noise_cov)), 4)}

    # 2. Normalised NT-Xent (tau 0.2, batch 256): block ratio, thresholds, and the trained ratio.
    ntxent = train_linear_encoder(project_objective("ntxent", 1500), two_block_views(1.0), 0.0, steps=1500,
                                  lr=LEARNING_RATES["ntxent"])
    thresholds = {tau: collapse_threshold(high=6.0, tolerance=1e-4 if tau == 0.2 else 2e-3, temperature=tau)
                  for tau in (0.2, 0.5, 1.0, 2.0, 4.0)}
    b_star = thresholds[0.2]
    out["normalised"] = {
        "optimal_ratio": {b: round(optimal_block_ratio(b), 4) for b in (0.5, 1.0, 2.0)},
        "trained_ratio_b1": round(float(ntxent.strengths[4:].mean() / ntxent.strengths[:4].mean()), 4),
        "threshold": {tau: round(value, 3) for tau, value in thresholds.items()},
        "high_temperature_threshold": {tau: round(high_temperature_collapse_threshold(tau), 3)
                                       for tau in thresholds},
    }
    # The onset below b* (tau 0.2): the optimum, the Landau prediction sqrt(-A / 2B), local exponents.
    gaps = (0.4, 0.2, 0.1, 0.05, 0.025, 0.0125)
    optimum = [optimal_block_ratio(b_star - gap) for gap in gaps]
    coefficients = landau_coefficients(b_star)
    slope_a = (landau_coefficients(b_star + 0.01)[0] - landau_coefficients(b_star - 0.01)[0]) / 0.02
    out["normalised"]["onset"] = {
        "landau_at_threshold": {"A": round(coefficients[0], 5), "B": round(coefficients[1], 1),
                                "C": round(coefficients[2], 0), "dA_db": round(slope_a, 4)},
        "amplitude_sqrt_dA_db_over_2B": round(float(np.sqrt(slope_a / (2 * coefficients[1]))), 4),
        "ratio_below_threshold": dict(zip(gaps, round_(optimum, 5))),
        "landau_ratio_below_threshold": {gap: round(landau_onset_ratio(b_star - gap), 5) for gap in gaps},
        "local_exponents": round_(np.diff(np.log(optimum)) / np.diff(np.log(gaps))),
    }

    # 3. Imbalance ratio 10, class means plus noise (sigma^2 = 0.1), spectral loss.
    priors, noise = long_tail_class_priors(10, 10.0), 0.1
    class_views = ClassMixtureViews(tuple(priors), noise)
    generator = torch.Generator().manual_seed(1)

    def draw(n):
        x, y = class_views.sample_labelled(n, generator, balanced=True)
        return (x + noise**0.5 * torch.randn(x.shape, generator=generator, dtype=torch.float64)).numpy(), y.numpy()

    (x_train, y_train), (x_test, y_test) = draw(200), draw(5000)
    imbalance = {}
    for gamma in (0.05, 0.1, 0.15, 0.2, 0.3):
        cross, single = class_mixture_view_covariances(priors, noise)
        predicted = predict_stationary_solution(spectral_contrastive_landscape(
            None, weight_decay=gamma, cross_view_covariance=cross, view_covariance=single))
        trained = train_linear_encoder(spectral_contrastive_sample_loss, class_views, gamma, steps=1500, lr=0.2)
        accuracy, per_class = ridge_probe_accuracy(x_train @ trained.weight.T, y_train, x_test @ trained.weight.T,
                                                   y_test, 1e-2)
        imbalance[gamma] = {
            "predicted_surviving": int(surviving_class_directions(priors, gamma, noise).sum()),
            "trained_surviving": trained.rank, "strengths": round_(trained.strengths),
            "predicted_strengths": round_(predicted_strengths(predicted)),
            "probe_accuracy": round(accuracy, 3), "probe_per_class": round_(per_class, 2)}
    out["imbalance"] = imbalance

    # 4. Square-root onset: spectral, gamma = 1, q = 1, p - gamma = delta; three seeds.
    delta = np.array([-0.1, -0.02, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64])
    data = (1.0 + delta) / 2
    onset = {"delta": delta.tolist(), "predicted": round_(singular_value_near_threshold(2 * data, 1.0, 1.0))}
    for seed in range(3):
        trained = train_linear_encoder(spectral_contrastive_sample_loss, GaussianViews(tuple(data), tuple(1 - data)),
                                       1.0, steps=2000, batch_size=1024, lr=0.05, seed=seed)
        above = delta > 0
        onset[f"seed{seed}"] = {"strengths": round_(trained.strengths, 4), "slope": round(float(np.polyfit(
            np.log(delta[above]), np.log(trained.strengths[above]), 1)[0]), 3)}
    out["onset"] = onset

    # 5. Rank-limited encoder (k = 2 of d = 4) and 6. the bias.
    data_r, noise_r = (3.0, 2.0, 1.0, 0.5), (0.5, 3.0, 0.1, 0.2)
    limited = predict_stationary_solution(spectral_contrastive_landscape(np.diag(data_r), np.diag(noise_r)), 2)
    trained = train_linear_encoder(spectral_contrastive_sample_loss, GaussianViews(data_r, noise_r), 0.0,
                                   steps=1000, lr=0.02, output_dim=2)
    out["rank_limited"] = {"strengths": round_(trained.strengths), "predicted": round_(predicted_strengths(limited))}
    mean = (2.0, -1.0, 0.0, 1.0)
    biased = predict_with_bias("spectral", mean, np.eye(4), np.diag([0.0, 0.5, 1.0, 3.0]), weight_decay=0.2)
    trained = train_linear_encoder(spectral_contrastive_sample_loss, GaussianViews((1.0,) * 4, (0.0, 0.5, 1.0, 3.0),
                                                                                   mean), 0.2, steps=1500, lr=0.02,
                                   bias=True)
    out["bias"] = {"strengths": round_(trained.strengths),
                   "predicted": round_(np.linalg.norm(biased.weight, axis=0)),
                   "mean_norm": round(float(np.linalg.norm(trained.weight @ np.array(mean) + trained.bias)), 4)}

    # 7. Few-label probe (24 labels, 30 draws) as augmentation collapses 12 nuisance directions of d = 16.
    dims, clean = 16, 4

    def probe_views(b):
        return GaussianViews((1.0,) * dims, (0.0,) * clean + (b,) * (dims - clean))

    def probe(weight, label_dims):
        g, values = torch.Generator().manual_seed(2), []
        for _ in range(30):
            x_tr, x_te = (probe_views(0.0).sample_inputs(n, g).numpy() for n in (24, 2000))
            y_tr, y_te = ((x[:, label_dims].sum(1) > 0).astype(int) for x in (x_tr, x_te))
            values.append(ridge_probe_accuracy(x_tr @ weight.T, y_tr, x_te @ weight.T, y_te, 1e-2)[0])
        return round(float(np.mean(values)), 3)

    labels = {"clean": list(range(clean)), "nuisance": list(range(clean, clean + 4))}
    probes = {}
    for b in (0.0, 1.0, 1.5, 1.9, 2.1, 3.0):
        views_b = probe_views(b)
        w_star = predict_stationary_solution(alignment_variance_landscape(views_b.data_covariance,
                                                                          views_b.augmentation_covariance)).weight
        probes[b] = {f"predicted_{name}": probe(w_star, dims_) for name, dims_ in labels.items()}
        if b in (0.0, 1.0, 3.0):
            w = train_linear_encoder(alignment_variance_sample_loss, views_b, 0.0, steps=600, lr=0.05).weight
            probes[b] |= {f"trained_{name}": probe(w, dims_) for name, dims_ in labels.items()}
    out["probe"] = probes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "theory-phase")
    parser.add_argument("--fine", action="store_true", help="issue 31's checks instead of the phase diagram")
    args = parser.parse_args(argv)
    if args.fine:
        started = time.perf_counter()
        emit(fine_checks() | {"seconds": round(time.perf_counter() - started, 1)})
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    cells, started = [], time.perf_counter()
    total = len(LOSSES) * len(B_GRID) * len(GAMMA_GRID)
    for name, spec in LOSSES.items():
        for b in B_GRID:
            for gamma in GAMMA_GRID:
                cells.append(run_cell(name, spec, b, gamma, args.steps))
                print(f"[{len(cells)}/{total}] {name} b={b:g} γ={gamma:g}: rank {cells[-1]['rank']}"
                      + (f" (theory {cells[-1]['predicted_rank']})" if "predicted_rank" in cells[-1] else ""),
                      file=sys.stderr, flush=True)
    (args.out / "phase.json").write_text(json.dumps(cells, indent=1) + "\n")
    plot(cells, args.out / "phase_diagram.png")
    theory_cells = [c for c in cells if "agrees" in c]
    emit({
        "steps": args.steps,
        "theory_losses_cells_agreeing": f"{sum(c['agrees'] for c in theory_cells)}/{len(theory_cells)}",
        "seconds": round(time.perf_counter() - started, 1),
        "out": str(args.out),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
