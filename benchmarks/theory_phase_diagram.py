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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "theory-phase")
    args = parser.parse_args(argv)
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
